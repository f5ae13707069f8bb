"""`python -m launch.slurm_setup <run dir>`: once per attempt, on the job's first node, before the
ranks start (the batch script runs it as a one-task srun step, inside the container if any).

- Records the attempt (job id, restart count, nodes) in runs/<name>/slurm/attempts.jsonl.
- precision.dtype=auto is resolved here, on a compute node (the login node that submitted may
  have another or no GPU), and written into config.yaml, so every rank and every later attempt
  uses that one dtype and checkpoints stay compatible.
- Validates config.yaml, so a broken one fails once with one line instead of on every rank.
"""
from __future__ import annotations

import os
import sys

from launch.errors import one_line_errors
from launch.slurm_jobs import record_attempt

PROG = "pretrain-slurm-setup"


def settle_job_precision(run_dir: str, log=print) -> list[str] | None:
    """Settle precision.dtype for this compute node (launch/precision.py: auto resolved once,
    explicit checked, with its warning where it runs emulated) and store it in config.yaml (atomic
    rewrite). Returns the lines logged, or None when an earlier attempt already resolved it."""
    from launch.precision import resolve_run_precision
    from parallel.precision import DTYPES
    from pretrain.train.rundir import load_raw_config, save_config

    raw = load_raw_config(run_dir)
    precision = raw.get("precision")
    if precision is None:
        return None  # config.yaml's own validation (below) names what is missing
    for key in ("resolved_from", "reason"):
        precision.setdefault(key, None)
    if precision.resolved_from == "auto" and precision.dtype in DTYPES:
        return None  # every attempt after the first keeps the dtype its checkpoints were written in
    lines = resolve_run_precision(raw)
    save_config(run_dir, raw)
    for line in lines:
        log(f"[setup] {line}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m launch.slurm_setup <run dir>", file=sys.stderr)
        return 2
    run_dir = argv[0]
    with one_line_errors(PROG):
        attempt = record_attempt(run_dir, os.environ)
        settle_job_precision(run_dir)
        from launch.slurm_node import rendezvous_port
        from pretrain.train.rundir import load_run_config

        cfg = load_run_config(run_dir)
        print(f"[setup] attempt {attempt['restart_count'] + 1} of job {attempt['job_id']}: {cfg.cluster.nnodes} node(s) "
              f"x {cfg.cluster.nproc} process(es), precision {cfg.precision.dtype}, {cfg.cluster.rendezvous} "
              f"rendezvous at {os.environ.get('MASTER_ADDR')}:{rendezvous_port(cfg, os.environ)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
