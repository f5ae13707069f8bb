"""Start the ranks of a run on this machine with torchrun."""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys

from omegaconf import DictConfig


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(cfg: DictConfig, run_dir: str, port: int | None = None) -> list[str]:
    port = port or cfg.cluster.master_port or free_port()
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={cfg.cluster.nnodes}",
        f"--nproc-per-node={cfg.cluster.nproc}",
        f"--master-addr={cfg.cluster.master_addr}",
        f"--master-port={port}",
        # Rank stdout (progress, logs) is shown and kept; rank stderr (tracebacks, library
        # noise) is kept in files only: the launcher prints the one line that matters.
        f"--log-dir={os.path.join(run_dir, 'logs', 'ranks')}", "--redirects=2", "--tee=1",
        "--module", "launch.worker", run_dir,
    ]


def rank_environment() -> dict[str, str]:
    env = dict(os.environ)
    # DeepSpeed picks CUDA by itself when present; on a machine without it, say so explicitly
    # instead of letting it probe (and log about) every accelerator it knows.
    if "DS_ACCELERATOR" not in env:
        import torch

        if not torch.cuda.is_available():
            env["DS_ACCELERATOR"] = "cpu"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_local(cfg: DictConfig, run_dir: str) -> int:
    cmd = torchrun_command(cfg, run_dir)
    print("+ " + shlex.join(cmd), flush=True)
    agent_log = open(os.path.join(run_dir, "logs", "torchrun.log"), "ab")
    proc = subprocess.Popen(cmd, env=rank_environment(), start_new_session=True, stderr=agent_log)

    def forward(signum, _frame):
        # Tell the ranks directly (SIGUSR1 = checkpoint and exit): signalling torchrun would make
        # it kill the ranks after its own short grace period, possibly mid-save.
        for child in _rank_processes(proc.pid):
            try:
                child.send_signal(signal.SIGUSR1)
            except Exception:  # already gone
                pass

    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, forward)
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                continue
    finally:
        agent_log.close()


def _rank_processes(torchrun_pid: int):
    import psutil

    try:
        children = psutil.Process(torchrun_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if _is_rank(c)]


def _is_rank(process) -> bool:
    try:
        return "launch.worker" in " ".join(process.cmdline())
    except Exception:
        return False
