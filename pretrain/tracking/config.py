"""Typed schema of the `tracker` config group. Defaults live in conf/tracker/*.yaml.

How often to log (`log_every`) belongs to the trainer, not here: this config only says *where*
metrics go and how wandb may behave.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

BACKENDS = ("jsonl", "tensorboard", "wandb")
WANDB_MODES = ("auto", "offline", "online", "disabled")
METRICS_FILE = "metrics.jsonl"   # <run_dir>/metrics.jsonl: written by jsonl.py, read by reader.py


@dataclass
class TrackerConfig:
    # JSONL is always written (compare and resume rely on it) even if not listed here.
    backends: list[str] = field(default_factory=lambda: ["jsonl", "tensorboard"])
    project: str = "bert-pretrain"          # wandb project
    entity: Optional[str] = None            # wandb entity (user or team); None = account default
    tags: list[str] = field(default_factory=list)
    # auto: online only if an API key is configured (env or netrc), else offline, so wandb never
    # reaches for the network on its own. An explicit value, or a user-set WANDB_MODE, wins.
    wandb_mode: str = "auto"

    def validate(self) -> "TrackerConfig":
        """Raise a one-line ValueError naming the bad key; return self so calls chain."""
        for b in self.backends:
            if b not in BACKENDS:
                raise ValueError(f"tracker.backends: unknown backend {b!r} (choose from {', '.join(BACKENDS)})")
        if self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"tracker.wandb_mode: {self.wandb_mode!r} is not one of {', '.join(WANDB_MODES)}")
        if not self.project:
            raise ValueError("tracker.project: must be a non-empty string")
        return self

    @classmethod
    def from_any(cls, cfg) -> "TrackerConfig":
        """Accept a TrackerConfig, a plain dict or an OmegaConf node (what Hydra hands us)."""
        if isinstance(cfg, cls):
            return cfg.validate()
        if not isinstance(cfg, dict):
            from omegaconf import OmegaConf
            cfg = OmegaConf.to_container(cfg, resolve=True)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"tracker.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
        cfg = dict(cfg)
        for key in ("backends", "tags"):
            if key in cfg and cfg[key] is not None:
                cfg[key] = list(cfg[key])
        return cls(**cfg).validate()
