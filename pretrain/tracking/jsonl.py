"""`<run_dir>/metrics.jsonl`: the always-on record that `pretrain-compare` and resume rely on.

One JSON object per log call: {"step": int, "time": unix seconds, **metrics}. Lines are flushed
as written so a crash loses at most the line being written. Every line is strict JSON: a
non-finite value is written as null and named in the line's "nonfinite" object with what it was,
e.g. {"step": 7, "train/loss": null, "nonfinite": {"train/loss": "nan"}}, so a diverged loss stays
visible and any JSON reader (jq, pandas, JavaScript) still parses the file.
"""
from __future__ import annotations

import json
import logging
import math
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


NONFINITE_KEY = "nonfinite"   # {"metric": "nan" | "inf" | "-inf"} for every value written as null


def split_nonfinite(values: dict) -> tuple[dict, dict[str, str]]:
    """(values with NaN/inf replaced by None, {key: "nan" | "inf" | "-inf"}): the one rule every
    backend follows (JSONL writes null plus the flag; TensorBoard and wandb log the flag)."""
    clean, flags = {}, {}
    for key, value in values.items():
        value = to_jsonable(value)
        if isinstance(value, float) and not math.isfinite(value):
            flags[key] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
            value = None
        clean[key] = value
    return clean, flags


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
        clean, flags = split_nonfinite({k: v for k, v in values.items() if k not in (*record, NONFINITE_KEY)})
        record.update(clean)  # "step"/"time"/"nonfinite" are ours; a metric cannot overwrite them
        if flags:
            record[NONFINITE_KEY] = flags
        self._fh.write(json.dumps(record, allow_nan=False) + "\n")

    def finish(self):
        if self._fh is not None and not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
