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


def resolve_auto_precision(run_dir: str, log=print) -> str | None:
    """If config.yaml says precision.dtype=auto, pick the dtype for this node's device and store
    it (atomic rewrite). Returns the one-line reason, or None when the dtype was already set."""
    from parallel.precision import resolve_precision
    from pretrain.train.config import ConfigError
    from pretrain.train.rundir import load_raw_config, save_config

    raw = load_raw_config(run_dir)
    if raw.get("precision", {}).get("dtype") != "auto":
        return None
    try:
        choice = resolve_precision("auto")
    except ValueError as e:
        raise ConfigError(f"config key 'precision.dtype' = 'auto': {e}") from None
    raw.precision.dtype = choice.dtype
    save_config(run_dir, raw)
    log(f"[setup] precision {choice.reason}; stored precision.dtype={choice.dtype} in config.yaml")
    if choice.warning:
        log(f"[setup] warning: {choice.warning}")
    return choice.reason


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m launch.slurm_setup <run dir>", file=sys.stderr)
        return 2
    run_dir = argv[0]
    with one_line_errors(PROG):
        attempt = record_attempt(run_dir, os.environ)
        resolve_auto_precision(run_dir)
        from launch.slurm_node import rendezvous_port
        from pretrain.train.rundir import load_run_config

        cfg = load_run_config(run_dir)
        print(f"[setup] attempt {attempt['restart_count'] + 1} of job {attempt['job_id']}: {cfg.cluster.nnodes} node(s) "
              f"x {cfg.cluster.nproc} process(es), precision {cfg.precision.dtype}, {cfg.cluster.rendezvous} "
              f"rendezvous at {os.environ.get('MASTER_ADDR')}:{rendezvous_port(cfg, os.environ)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
