"""`<run_dir>/wandb/`: wandb, offline unless an API key is configured, resumable by run id.

A GeneralTracker (accelerate's tracker interface) calling wandb directly. accelerate's own
WandBTracker would let us pass dir/id/resume/mode through, but it logs through accelerate.logging,
which raises unless an accelerate PartialState exists (creating one in DeepSpeed ranks would set
up torch.distributed/device state behind the engine's back), and it cannot make wandb's *global*
settings offline, which is what stops wandb 0.31's telemetry exporter from probing the cloud host
even for an offline run (see wandb_mode.py).
"""
from __future__ import annotations

import os
import secrets
import string
from pathlib import Path
from typing import Optional

from accelerate.tracking import GeneralTracker

from .jsonl import split_nonfinite


def new_run_id(length: int = 8) -> str:
    """wandb-style id (lowercase alphanumerics) made here, so state() has it before init returns."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def quiet_global_wandb(mode: str) -> None:
    """Put wandb's process-wide settings in `mode` before any wandb.init.

    For non-online modes also switch wandb's OpenTelemetry proxy off outright (a private but
    documented "turn analytics off for the whole process" switch), in case something in this
    process already built it from online global settings.
    """
    import wandb
    wandb.setup(settings=wandb.Settings(mode=mode))
    if mode != "online":
        try:
            from wandb.analytics.opentelemetry import opentelemetry_proxy
            opentelemetry_proxy.disable()
        except (ImportError, AttributeError):  # other wandb versions: global offline suffices
            pass


class WandbTracker(GeneralTracker):
    """One wandb run per training run; the same id (kept in checkpoints) continues it."""

    name = "wandb"
    requires_logging_directory = False
    main_process_only = False  # rank gating is build_tracker's job

    def __init__(self, run_dir: str | os.PathLike, run_name: str, project: str, entity: Optional[str],
                 tags: list[str], mode: str, run_id: Optional[str], config: Optional[dict]):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.run_name, self.project, self.entity, self.tags = run_name, project, entity, list(tags or [])
        self.mode = mode
        self.run_id = run_id or new_run_id()
        self.config = config
        self.run = None

    def start(self):
        import wandb

        quiet_global_wandb(self.mode)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            name=self.run_name,
            tags=self.tags or None,
            dir=str(self.run_dir),      # wandb writes <run_dir>/wandb/
            id=self.run_id,
            resume="allow",             # same id -> same dashboard run after a restart
            mode=self.mode,
            config=self.config,
            settings=wandb.Settings(mode=self.mode),
            reinit="create_new",        # never hand back some other active run
        )

    @property
    def tracker(self):
        return self.run

    def store_init_configuration(self, values: dict):
        self.run.config.update(values, allow_val_change=True)

    def log(self, values: dict, step: Optional[int] = None, **kwargs):
        """Non-finite values are left out and the step is marked in `nonfinite/<key>` = 1, as in
        TensorBoard (JSONL writes null plus a flag: the same rule)."""
        clean, flags = split_nonfinite(values)
        row = {k: v for k, v in clean.items() if v is not None}
        row.update({f"nonfinite/{k}": 1.0 for k in flags})
        self.run.log(row, step=step)

    def summary(self, values: dict):
        clean, flags = split_nonfinite(values)
        for k, v in clean.items():
            if v is not None:
                self.run.summary[k] = v
        for k in flags:
            self.run.summary[f"nonfinite/{k}"] = 1.0

    def finish(self):
        if self.run is not None:
            self.run.finish()
