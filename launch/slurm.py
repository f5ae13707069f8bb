"""The seam for `cluster=slurm`: render slurm/*.sbatch and submit it with sbatch.

Not implemented yet (a later issue builds and tests it against a throwaway SLURM cluster);
until then selecting it is one clear error rather than a half-working job script.
"""
from __future__ import annotations

from omegaconf import DictConfig


def _not_yet() -> None:
    from pretrain.train.config import ConfigError

    raise ConfigError("config key 'cluster.kind' = 'slurm' is not implemented yet; use cluster=local (torchrun)")


def render_sbatch(cfg: DictConfig, run_dir: str) -> str:
    _not_yet()
    return ""


def submit(cfg: DictConfig, run_dir: str) -> int:
    _not_yet()
    return 1
