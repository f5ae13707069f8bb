"""What the ranks read from and leave in a run directory besides checkpoints and metrics.

`config.yaml`: the resolved config the launcher wrote (ranks, export and the SLURM job read it;
Hydra never composes again). `finished.json`: written by rank 0 once the run reached its budget
and finished eval/export, so a requeued or chained job knows there is nothing left to do; the
launcher removes it when it writes a new config (a relaunch with a bigger budget continues).
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

from omegaconf import DictConfig, OmegaConf

CONFIG_NAME = "config.yaml"
FINISHED_NAME = "finished.json"


def load_run_config(run_dir: str) -> DictConfig:
    """The run's config.yaml, validated against the schema (one-line ConfigError otherwise)."""
    from pretrain.train.config import validate

    return validate(load_raw_config(run_dir))


def load_raw_config(run_dir: str) -> DictConfig:
    """config.yaml as written, not validated (cheap: no schema, no engine imports)."""
    from pretrain.train.config import ConfigError

    path = os.path.join(run_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file; is {run_dir!r} a run directory made by pretrain-launch?")
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # yaml errors have many types
        raise ConfigError(f"{path}: not a valid config ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: not a valid config (not a mapping)")
    return raw


def save_config(run_dir: str, cfg: DictConfig) -> str:
    """Write config.yaml atomically (tmp + rename): a reader never sees half a file."""
    path = os.path.join(run_dir, CONFIG_NAME)
    tmp = path + ".tmp"
    OmegaConf.save(cfg, tmp)
    os.replace(tmp, path)
    return path


def mark_finished(run_dir: str, step: int, reason: str) -> None:
    """Rank 0, at the very end of a run that reached its budget."""
    path = os.path.join(run_dir, FINISHED_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"step": step, "reason": reason, "time": time.time()}, f)
        f.write("\n")
    os.replace(tmp, path)


def read_finished(run_dir: str) -> Optional[dict]:
    """The finished marker, or None while the run still has work left (or the marker is unreadable)."""
    try:
        with open(os.path.join(run_dir, FINISHED_NAME)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def clear_finished(run_dir: str) -> None:
    try:
        os.remove(os.path.join(run_dir, FINISHED_NAME))
    except FileNotFoundError:
        pass
