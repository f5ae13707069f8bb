"""`python -m launch.slurm_node <run dir>`: the agent of one node of a SLURM job (srun starts one
task per node). Starts torchrun for this node's `cluster.nproc` ranks, with the node rank from
SLURM_NODEID and the rendezvous at the first node (MASTER_ADDR, resolved once by the batch
script) on a port derived from the job id; passes checkpoint signals to the ranks directly
(launch/agent.py).
"""
from __future__ import annotations

import os
import signal
import socket
import sys

from launch.errors import one_line_errors

PROG = "pretrain-slurm-node"


def rendezvous_port(cfg, env) -> int:
    from parallel.topology import slurm_master_port

    return cfg.cluster.master_port or slurm_master_port(env["SLURM_JOB_ID"])


def node_geometry(cfg, env) -> tuple[int, int, str]:
    """(node rank, nodes, master address) from SLURM's variables, checked against the config."""
    from pretrain.train.config import ConfigError

    missing = [k for k in ("SLURM_JOB_ID", "SLURM_NODEID", "SLURM_NNODES") if not env.get(k)]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not set: run this through the job script (runs/<name>/slurm/job.sbatch)")
    nnodes = int(env["SLURM_NNODES"])
    if nnodes != cfg.cluster.nnodes:
        raise ConfigError(f"config key 'cluster.nnodes' = {cfg.cluster.nnodes} but this job step has "
                          f"SLURM_NNODES={nnodes} nodes")
    addr = env.get("MASTER_ADDR")
    if not addr:
        raise ConfigError("MASTER_ADDR not set: the job script resolves it from the first node of the job "
                          "(scontrol); not guessing, each node would train alone")
    return int(env["SLURM_NODEID"]), nnodes, addr


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m launch.slurm_node <run dir>", file=sys.stderr)
        return 2
    run_dir = argv[0]
    env = os.environ
    with one_line_errors(PROG):
        from launch.agent import run_agent
        from launch.local import rank_environment, torchrun_command
        from pretrain.train.rundir import load_run_config

        cfg = load_run_config(run_dir)
        node_rank, nnodes, addr = node_geometry(cfg, env)
        port = rendezvous_port(cfg, env)
        job = env["SLURM_JOB_ID"]
        attempt = int(env.get("SLURM_RESTART_COUNT") or 0)
        log_dir = os.path.join(run_dir, "logs", "ranks", f"job{job}-attempt{attempt}", f"node{node_rank}")
        os.makedirs(log_dir, exist_ok=True)
        cmd = torchrun_command(cfg, run_dir, port=port, master_addr=addr, node_rank=node_rank, log_dir=log_dir,
                               rendezvous=cfg.cluster.rendezvous, run_id=job)
        print(f"[node {node_rank}/{nnodes} {socket.gethostname()}] torchrun: {cfg.cluster.nproc} rank(s), "
              f"{cfg.cluster.rendezvous} rendezvous at {addr}:{port}", flush=True)
        with open(os.path.join(log_dir, "torchrun.log"), "ab") as agent_log:
            code = run_agent(cmd, rank_environment(), signal.Signals[f"SIG{cfg.cluster.signal}"], agent_log)
        if code != 0:
            from launch.worker import first_rank_error

            message = first_rank_error(run_dir, log_dir) or f"the ranks exited with code {code}; see {log_dir}"
            print(f"[node {node_rank}] error: {message}", file=sys.stderr, flush=True)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
