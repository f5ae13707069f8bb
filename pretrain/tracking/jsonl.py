"""`<run_dir>/metrics.jsonl`: the always-on record that `pretrain-compare` and resume rely on.

One JSON object per log call: {"step": int, "time": unix seconds, **metrics}. Lines are flushed
as written so a crash loses at most the line being written. Non-finite floats are written as
NaN/Infinity (Python's json reads them back; a diverged loss must stay visible).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from accelerate.tracking import GeneralTracker

from .config import METRICS_FILE as FILENAME

log = logging.getLogger(__name__)


def to_jsonable(value: Any) -> Any:
    """Tensors / numpy scalars -> Python numbers; strings and numbers pass through."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "item"):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    return str(value)


def truncate_after(path: Path, step: int) -> tuple[int, int]:
    """Drop lines with step > `step` (written after the checkpoint we resume from) and torn lines.

    Streams into a temp file and renames it over the original, so memory stays bounded and a
    crash mid-rewrite leaves the old file intact. Returns (kept, dropped). The file is left
    untouched when nothing has to go.
    """
    path = Path(path)
    if not path.exists():
        return 0, 0
    kept = dropped = 0
    tmp = path.with_name(path.name + ".rewrite")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        for raw in src:
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("torn last line")
                rec_step = json.loads(raw)["step"]
                keep = int(rec_step) <= step
            except (ValueError, KeyError, TypeError):
                keep = False  # a line cut by the crash, or not ours
            if keep:
                dst.write(raw)
                kept += 1
            else:
                dropped += 1
        dst.flush()
        os.fsync(dst.fileno())
    if dropped:
        os.replace(tmp, path)
        log.warning("metrics.jsonl: resumed at step %d, dropped %d line(s) logged after the checkpoint", step, dropped)
    else:
        tmp.unlink()
    return kept, dropped


def set_aside(path: Path) -> Optional[Path]:
    """A fresh (non-resumed) run must not append to an old curve: rename the old file away."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return None
    aside = path.with_name(f"{path.name}.stale-{int(time.time())}")
    os.replace(path, aside)
    log.warning("%s existed but the run starts fresh: moved it to %s", path, aside.name)
    return aside


class JSONLTracker(GeneralTracker):
    """accelerate GeneralTracker that appends one JSON line per `log` call."""

    name = "jsonl"
    requires_logging_directory = True
    # Rank gating is done by build_tracker(is_main=...): never let accelerate build a PartialState
    # (which may initialise torch.distributed behind the engine's back).
    main_process_only = False

    def __init__(self, run_dir: str | os.PathLike, resume_step: Optional[int] = None):
        super().__init__()
        self.path = Path(run_dir) / FILENAME
        self.resume_step = resume_step
        self._fh = None

    def start(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.resume_step is None:
            set_aside(self.path)
        else:
            truncate_after(self.path, self.resume_step)
        self._fh = open(self.path, "a", encoding="utf-8", buffering=1)  # line-buffered

    @property
    def tracker(self):
        return self._fh

    def store_init_configuration(self, values: dict):
        """The resolved config lives in runs/<name>/config.yaml already; nothing to add here."""

    def log(self, values: dict, step: Optional[int] = None, **kwargs):
        record = {"step": int(step) if step is not None else None, "time": round(time.time(), 3)}
        for k, v in values.items():
            if k not in record:  # "step"/"time" are ours; a metric cannot overwrite them
                record[k] = to_jsonable(v)
        self._fh.write(json.dumps(record) + "\n")

    def finish(self):
        if self._fh is not None and not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
