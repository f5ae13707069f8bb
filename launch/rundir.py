"""The run directory: where a run's resolved config, checkpoints, metrics and logs live."""
from __future__ import annotations

import os
import time

from omegaconf import DictConfig, OmegaConf

from pretrain.train.rundir import clear_finished, save_config


def run_dir_path(cfg: DictConfig) -> str:
    return os.path.abspath(os.path.join(cfg.run.root, cfg.run.name))


def prepare_run_dir(cfg: DictConfig) -> str:
    """Create runs/<name>/ and write the resolved config that every rank reads.

    An existing run is resumed (its checkpoints stay); `run.fresh=true` moves it aside first
    rather than deleting anything. A new config may carry a bigger budget, so an old
    `finished.json` no longer holds and is removed.
    """
    run_dir = run_dir_path(cfg)
    if cfg.run.fresh and os.path.exists(run_dir):
        aside = f"{run_dir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(run_dir, aside)
        print(f"run.fresh=true: moved the previous run to {aside}", flush=True)
    os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
    stored = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    stored.run.fresh = False  # a requeued job must resume, never start over again
    save_config(run_dir, stored)
    clear_finished(run_dir)
    return run_dir
