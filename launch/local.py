"""cluster=local: start the ranks of a run on this machine with torchrun."""
from __future__ import annotations

import os
import signal
import socket
import sys

from omegaconf import DictConfig

from launch.agent import RANK_MODULE, run_agent

PROG = "pretrain-launch"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(cfg: DictConfig, run_dir: str, *, port, master_addr: str | None = None, node_rank: int = 0,
                     log_dir: str | None = None, rendezvous: str = "static", run_id: str = "none") -> list[str]:
    """torchrun for one node's `cluster.nproc` ranks. Static rendezvous: node rank given, node 0
    hosts the store at master_addr:port. c10d: torchrun's elastic rendezvous at that endpoint."""
    addr = master_addr or cfg.cluster.master_addr
    if rendezvous == "c10d":
        where = ["--rdzv-backend=c10d", f"--rdzv-endpoint={addr}:{port}", f"--rdzv-id={run_id}"]
    else:
        where = [f"--node-rank={node_rank}", f"--master-addr={addr}", f"--master-port={port}"]
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={cfg.cluster.nnodes}",
        f"--nproc-per-node={cfg.cluster.nproc}",
        *where,
        # Rank stdout (progress, logs) is shown and kept; rank stderr (tracebacks, library
        # noise) is kept in files only: the launcher prints the one line that matters.
        f"--log-dir={log_dir or os.path.join(run_dir, 'logs', 'ranks')}", "--redirects=2", "--tee=1",
        "--module", RANK_MODULE, run_dir,
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


class LocalLauncher:
    """torchrun on this machine; the launcher process stays and forwards Ctrl-C / SIGTERM to the
    ranks as the checkpoint signal (they save and exit)."""

    def check(self, cfg: DictConfig, submit: bool) -> None:
        from pretrain.train.config import ConfigError

        if cfg.cluster.nnodes != 1:
            raise ConfigError(
                f"config key 'cluster.nnodes' = {cfg.cluster.nnodes}; cluster=local starts one node, use cluster=slurm for more"
            )

    def describe(self, cfg: DictConfig, run_dir: str) -> str:
        import shlex

        port = cfg.cluster.master_port or "<free port>"
        return "would run: " + shlex.join(torchrun_command(cfg, run_dir, port=port))

    def launch(self, cfg: DictConfig, run_dir: str) -> int:
        import shlex

        print(f"run directory: {run_dir}", flush=True)
        cmd = torchrun_command(cfg, run_dir, port=cfg.cluster.master_port or free_port())
        print("+ " + shlex.join(cmd), flush=True)
        with open(os.path.join(run_dir, "logs", "torchrun.log"), "ab") as agent_log:
            code = run_agent(cmd, rank_environment(), signal.Signals[f"SIG{cfg.cluster.signal}"], agent_log)
        if code != 0:
            from launch.worker import first_rank_error

            message = first_rank_error(run_dir) or f"the ranks exited with code {code}; see {run_dir}/logs/"
            print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
        return code
