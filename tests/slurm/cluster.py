"""A throwaway SLURM cluster on this machine: munge, slurmctld and two slurmd (emulated nodes).

Measured facts behind each choice: ../shared/notes/slurm-on-one-machine.md. Everything lives in
one temp dir except munge's socket, which needs a 0755 directory under /tmp (munged refuses a
socket whose parents are not world-executable; pytest's temp dirs are 0700). Daemons are stopped
by their pids, never by name: other test runs may have their own cluster on the same machine.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "srun")
ENABLE_HINT = ("install them with `apt-get install slurmctld slurmd slurm-client munge` "
               "(make test does this itself when run as root)")
NODES = ("n1", "n2")
# Ports: a block of three (controller, n1, n2) away from the ephemeral range and from torchrun's
# usual 29500; the next blocks are tried when another test run holds one.
BASE_PORT = int(os.environ.get("PRETRAIN_TEST_SLURM_PORT", "16817"))
PORT_BLOCKS = 8
# SLURM holds a requeued job for the credential lifetime (default 120 s) before it may start again;
# starting it earlier by hand fails ("Job credential revoked"). Short here, long enough for a
# loaded machine to launch a step.
CRED_EXPIRE = 20


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None and not os.path.exists(f"/usr/sbin/{p}")]


def ensure_installed() -> str | None:
    """Install the Debian packages when missing and allowed; the reason to skip, or None."""
    if not missing_programs():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"SLURM tests skipped: {', '.join(missing_programs())} not installed; {ENABLE_HINT}"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
            return f"SLURM tests skipped: `{' '.join(cmd)}` failed ({tail[0]}); {ENABLE_HINT}"
    still = missing_programs()
    return f"SLURM tests skipped: {', '.join(still)} still missing after apt-get install" if still else None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports() -> tuple[int, int, int]:
    for block in range(PORT_BLOCKS):
        ports = tuple(BASE_PORT + 10 * block + i for i in range(3))
        if all(_port_free(p) for p in ports):
            return ports  # type: ignore[return-value]
    raise RuntimeError(
        f"test SLURM cluster: ports {BASE_PORT}..{BASE_PORT + 10 * PORT_BLOCKS} are all taken "
        "(another test cluster running?); set PRETRAIN_TEST_SLURM_PORT to a free range"
    )


def _real_memory_mb() -> int:
    with open("/proc/meminfo") as f:
        total_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return max(1000, total_kb // 1024 // 4)  # each emulated node claims a quarter


@dataclass
class SlurmCluster:
    root: str
    env: dict
    ports: tuple[int, int, int]
    pids: dict = field(default_factory=dict)

    # ---- lifecycle -------------------------------------------------------------------------
    @classmethod
    def start(cls, root: str) -> "SlurmCluster":
        ports = pick_ports()
        munge_dir = tempfile.mkdtemp(prefix="pretrain-munge-", dir="/tmp")
        os.chmod(munge_dir, 0o755)
        for sub in ("state", "spool", "log", "run"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        conf = os.path.join(root, "slurm.conf")
        socket_path = os.path.join(munge_dir, "munge.socket")
        cpus = max(1, os.cpu_count() or 1)
        mem = _real_memory_mb()
        # FirstJobId varies per cluster so two test clusters on one host derive different
        # master ports from their job ids.
        first_job = 1000 + (os.getpid() % 400) * 100
        with open(conf, "w") as f:
            f.write(f"""\
ClusterName=pretraintest
SlurmctldHost=localhost
SlurmctldPort={ports[0]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={socket_path},cred_expire={CRED_EXPIRE}
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerParameters=sched_interval=1
JobRequeue=1
MinJobAge=600
KillWait=30
FirstJobId={first_job}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
JobCompType=jobcomp/none
NodeName={NODES[0]} NodeHostname=localhost NodeAddr=127.0.0.1 Port={ports[1]} CPUs={cpus} RealMemory={mem}
NodeName={NODES[1]} NodeHostname=localhost NodeAddr=127.0.0.1 Port={ports[2]} CPUs={cpus} RealMemory={mem}
PartitionName=debug Nodes={NODES[0]},{NODES[1]} Default=YES MaxTime=INFINITE State=UP
""")
        env = dict(os.environ, SLURM_CONF=conf)
        cluster = cls(root=root, env=env, ports=ports)
        cluster.munge_dir = munge_dir
        try:
            key = os.path.join(root, "munge.key")
            with open(key, "wb") as f:
                f.write(os.urandom(1024))
            os.chmod(key, 0o400)
            cluster._daemon("munged", ["munged", "--force", f"--socket={socket_path}", f"--key-file={key}",
                                       f"--pid-file={munge_dir}/munged.pid", f"--log-file={root}/log/munged.log",
                                       f"--seed-file={root}/munge.seed"], f"{munge_dir}/munged.pid")
            cluster._daemon("slurmctld", ["slurmctld", "-f", conf, "-c", "-i"], f"{root}/run/slurmctld.pid")
            for node in NODES:
                cluster._daemon(f"slurmd-{node}", ["slurmd", "-f", conf, "-N", node], f"{root}/run/slurmd-{node}.pid")
            cluster._wait_idle()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _daemon(self, name: str, cmd: list[str], pid_file: str, timeout: float = 30) -> None:
        result = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"test SLURM cluster: {name} failed to start: {(result.stderr or result.stdout).strip()}")
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with open(pid_file) as f:
                    self.pids[name] = int(f.read().strip())
                return
            except (FileNotFoundError, ValueError):
                time.sleep(0.05)
        raise RuntimeError(f"test SLURM cluster: {name} wrote no pid file {pid_file}; see {self.root}/log")

    def _wait_idle(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        out = ""
        while time.time() < deadline:
            out = self.run(["sinfo", "-N", "-h", "-t", "idle", "-o", "%N"], check=False).stdout
            if all(node in out.split() for node in NODES):
                return
            time.sleep(0.2)
        raise RuntimeError(f"test SLURM cluster: nodes not idle after {timeout}s (sinfo: {out!r}); see {self.root}/log")

    def stop(self) -> None:
        """Cancel this cluster's jobs and wait for them (their processes belong to slurmstepd,
        which outlives slurmd), then stop the daemons."""
        if "slurmctld" in self.pids:
            self.run(["scancel", "--full", "--user=root"], check=False)
            deadline = time.time() + 60
            while time.time() < deadline:
                out = self.run(["squeue", "-h", "-o", "%i"], check=False)
                if out.returncode == 0 and not out.stdout.strip():
                    break
                time.sleep(0.5)
            time.sleep(1)  # slurmstepd reports to slurmd last
        for name in reversed(list(self.pids)):
            pid = self.pids.pop(name)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.time() + 20
            while time.time() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(getattr(self, "munge_dir", ""), ignore_errors=True)

    # ---- use -------------------------------------------------------------------------------
    def run(self, cmd: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def job(self, job_id: str) -> dict:
        """`scontrol show job -o` as a dict (JobState, RestartCnt, ExitCode, ...)."""
        out = self.run(["scontrol", "show", "job", "-o", str(job_id)]).stdout
        fields = {}
        for token in out.split():
            if "=" in token:
                key, value = token.split("=", 1)
                fields.setdefault(key, value)
        return fields

    def wait_job(self, job_id: str, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                             "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"),
                 timeout: float = 300, poll: float = 0.5) -> dict:
        deadline = time.time() + timeout
        info: dict = {}
        while time.time() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(poll)
        raise AssertionError(f"job {job_id} not in {states} after {timeout}s: {info.get('JobState')} {info.get('Reason')}")
