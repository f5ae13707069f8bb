"""`<run_dir>/tensorboard/`: the embedded default dashboard (`tensorboard --logdir runs/`).

A GeneralTracker (accelerate's tracker interface) wrapping torch's SummaryWriter directly.
accelerate's own TensorBoardTracker does not fit two ways: (1) it logs through accelerate.logging,
which raises unless an accelerate PartialState/Accelerator exists, and creating one in our
DeepSpeed/torchrun ranks would set up torch.distributed/device state behind the engine's back;
(2) its store_init_configuration calls add_hparams without run_name='.', which adds a sub-run per
call, plus a timestamp folder with a YAML copy of the config.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from accelerate.tracking import GeneralTracker

from .jsonl import split_nonfinite

SUBDIR = "tensorboard"


def flatten_hparams(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b": scalar}: the only value types add_hparams accepts."""
    out: dict[str, Any] = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_hparams(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        elif value is None:
            out[name] = "None"
        else:  # lists, tuples
            out[name] = json.dumps(value, default=str)
    return out


class TBTracker(GeneralTracker):
    """Scalars (and strings as text) into <run_dir>/tensorboard/, one TensorBoard run per run dir.

    On resume SummaryWriter(purge_step=step+1) makes TensorBoard discard the events logged after
    the checkpoint, so curves never go backwards.
    """

    name = "tensorboard"
    requires_logging_directory = True
    main_process_only = False  # rank gating is build_tracker's job

    def __init__(self, run_dir: str | os.PathLike, resume_step: Optional[int] = None):
        super().__init__()
        self.logdir = Path(run_dir) / SUBDIR
        self.resume_step = resume_step
        self.writer = None

    def start(self):
        from torch.utils.tensorboard import SummaryWriter

        self.logdir.mkdir(parents=True, exist_ok=True)
        if self.resume_step is not None:
            purge = self.resume_step + 1
        elif any(p.name.startswith("events.") for p in self.logdir.iterdir()):
            purge = 0  # fresh start over old events (crash before 1st checkpoint): hide them all
        else:
            purge = None
        self.writer = SummaryWriter(str(self.logdir), purge_step=purge)

    @property
    def tracker(self):
        return self.writer

    def store_init_configuration(self, values: dict):
        # run_name="." keeps the hparams in this run instead of a new timestamped sub-run.
        self.writer.add_hparams(flatten_hparams(values), metric_dict={}, run_name=".")
        self.writer.flush()

    def log(self, values: dict, step: Optional[int] = None, **kwargs):
        """A non-finite value is not drawn (it would wreck the chart's axis); the step is marked
        in `nonfinite/<key>` = 1 instead (JSONL writes null plus a flag: the same rule)."""
        clean, flags = split_nonfinite(values)
        for key in flags:
            self.writer.add_scalar(f"nonfinite/{key}", 1.0, global_step=step)
        for key, value in clean.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, global_step=step)
            elif isinstance(value, str):
                self.writer.add_text(key, value, global_step=step)

    def finish(self):
        if self.writer is not None:
            self.writer.close()
