"""The run directory: where a run's resolved config, checkpoints, metrics and logs live."""
from __future__ import annotations

import os
import time

from omegaconf import DictConfig, OmegaConf

CONFIG_NAME = "config.yaml"


def prepare_run_dir(cfg: DictConfig) -> str:
    """Create runs/<name>/ and write the resolved config that every rank reads.

    An existing run is resumed (its checkpoints stay); `run.fresh=true` moves it aside first
    rather than deleting anything.
    """
    run_dir = os.path.abspath(os.path.join(cfg.run.root, cfg.run.name))
    if cfg.run.fresh and os.path.exists(run_dir):
        aside = f"{run_dir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(run_dir, aside)
        print(f"run.fresh=true: moved the previous run to {aside}", flush=True)
    os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
    stored = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    stored.run.fresh = False  # a requeued job must resume, never start over again
    tmp = os.path.join(run_dir, CONFIG_NAME + ".tmp")
    OmegaConf.save(stored, tmp)
    os.replace(tmp, os.path.join(run_dir, CONFIG_NAME))
    return run_dir


def load_run_config(run_dir: str) -> DictConfig:
    from pretrain.train.config import ConfigError, validate

    path = os.path.join(run_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file; is {run_dir!r} a run directory made by pretrain-launch?")
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # yaml errors have many types
        raise ConfigError(f"{path}: not a valid config ({str(e).splitlines()[0]})") from None
    return validate(raw)
