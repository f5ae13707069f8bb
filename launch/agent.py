"""Supervise one node's torchrun and pass checkpoint requests straight to its ranks.

Why not through torchrun: torchrun forwards only INT/TERM/HUP/QUIT and kills its workers about 30 s
after a SIGTERM, possibly mid-save; and it dies of a SIGUSR1/2 it does not handle. So torchrun
starts with the checkpoint signal ignored (inherited by the ranks until they install their own
handler, launch/worker.py), and this process sends the signal to every rank itself, including
ranks that start after it came: a signal during start-up is not lost. Used by cluster=local (the
launcher process) and by cluster=slurm (launch/slurm_node.py, one per node).
"""
from __future__ import annotations

import signal
import subprocess
import time

RANK_MODULE = "launch.worker"
# A rank ignores the checkpoint signal (inherited) until launch/worker.py installs its handler:
# only a rank that catches it is signalled; the others on a later pass. Where /proc cannot say,
# a rank this old is assumed to have its handler.
SETTLE_SECONDS = 3.0


def run_agent(cmd: list[str], env: dict, checkpoint_signal: signal.Signals, agent_log, triggers=None) -> int:
    """Run `cmd` (torchrun); on any of `triggers` send `checkpoint_signal` to its ranks. Returns
    torchrun's exit code. `agent_log` receives torchrun's own stderr."""
    triggers = triggers or (signal.SIGTERM, signal.SIGINT, checkpoint_signal)

    def ignore_in_child():
        signal.signal(checkpoint_signal, signal.SIG_IGN)

    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=agent_log, preexec_fn=ignore_in_child)
    pending = False
    told: set[int] = set()

    def forward() -> None:
        now = time.time()
        for child in rank_processes(proc.pid):
            if child.pid in told:
                continue
            try:
                if catches(child.pid, checkpoint_signal, now - child.create_time()):
                    child.send_signal(checkpoint_signal)
                    told.add(child.pid)
            except Exception:  # already gone
                pass

    def on_signal(_signum, _frame):
        nonlocal pending
        pending = True
        forward()

    previous = {sig: signal.signal(sig, on_signal) for sig in set(triggers)}
    try:
        while True:
            try:
                return proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                if pending:
                    forward()  # ranks that were too young, or started after the signal came
            except KeyboardInterrupt:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # The ranks are gone: a late checkpoint signal (SLURM signals every process of the step)
        # must not kill this process on its way out and make the node look failed.
        signal.signal(checkpoint_signal, signal.SIG_IGN)


def catches(pid: int, sig: signal.Signals, age: float) -> bool:
    """Whether process `pid` has a handler for `sig` (Linux: the SigCgt mask in /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool((int(line.split()[1], 16) >> (int(sig) - 1)) & 1)
    except OSError:
        pass
    return age >= SETTLE_SECONDS


def rank_processes(torchrun_pid: int):
    import psutil

    try:  # torchrun starts its workers as direct children; theirs (data loaders) are not ranks
        children = psutil.Process(torchrun_pid).children(recursive=False)
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if _is_rank(c)]


def _is_rank(process) -> bool:
    try:
        return RANK_MODULE in " ".join(process.cmdline())
    except Exception:
        return False

