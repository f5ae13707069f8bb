"""What each rank runs (via torchrun): read the run's resolved config and train (pretraining, or
fine-tuning when config.yaml is a pretrain-finetune one).

User errors are written to `logs/error-rank<k>.txt` (first line = the message) so the launcher
can print one line instead of torchrun's failure report.
"""
from __future__ import annotations

import glob
import os
import sys

from omegaconf import OmegaConf

from launch.errors import user_error_types


def first_rank_error(run_dir: str) -> str | None:
    """The first user error any rank reported, else the tail of the first rank traceback found."""
    for path in sorted(glob.glob(os.path.join(run_dir, "logs", "error-rank*.txt"))):
        with open(path) as f:
            line = f.readline().strip()
        if line:
            return line
    for path in sorted(glob.glob(os.path.join(run_dir, "logs", "ranks", "**", "stderr.log"), recursive=True)):
        with open(path, errors="replace") as f:
            lines = [line.rstrip() for line in f if line.strip()]
        if any("Traceback" in line for line in lines):
            return f"a rank crashed: {lines[-1]} (full traceback: {path})"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m launch.worker <run dir>", file=sys.stderr)
        return 2
    run_dir = argv[0]
    rank = os.environ.get("RANK", "0")
    error_file = os.path.join(run_dir, "logs", f"error-rank{rank}.txt")
    if os.path.exists(error_file):
        os.remove(error_file)
    try:
        from launch.rundir import CONFIG_NAME, load_run_config
        from pretrain.finetune.config import is_finetune_config

        raw = OmegaConf.load(os.path.join(run_dir, CONFIG_NAME)) if os.path.isfile(os.path.join(run_dir, CONFIG_NAME)) else {}
        if is_finetune_config(raw):  # pretrain-finetune with cluster.nproc > 1
            from pretrain.finetune.config import validate
            from pretrain.finetune.train import finetune

            finetune(validate(raw), run_dir)
        else:
            from pretrain.train.loop import train

            train(load_run_config(run_dir), run_dir)
    except user_error_types() as e:
        os.makedirs(os.path.dirname(error_file), exist_ok=True)
        with open(error_file, "w") as f:
            f.write(f"{e}\n")
        print(f"[rank {rank}] error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
