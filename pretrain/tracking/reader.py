"""Stream a run's metrics.jsonl into bounded-size curves (for `pretrain-compare`).

Memory is O(metrics x max_points) whatever the run length: each curve keeps every k-th point and
doubles k when it fills up. Last value and best eval accuracy are tracked exactly on the side.
Non-finite values (null plus the line's "nonfinite" flag, or a bare NaN from older files) are
counted and kept as the last value, but left out of the curves (a gap, not a wrecked axis).
"""
from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .config import METRICS_FILE as FILENAME
from .jsonl import NONFINITE_KEY

# What the trainer itself logs (whatever the objective), in display order. An objective's own
# metrics come from the run's objective.json (pretrain/objectives/base.py `describe`).
TRAINER_METRICS = [
    "train/loss", "train/lr", "train/grad_norm", "train/loss_scale", "train/tokens_per_s", "train/samples_per_s",
    "train/mfu", "train/data_wait", "train/peak_mem_gb", "train/loss_ratio", "train/loss_spikes",
    "train/nonfinite_steps", "train/skipped_updates", "train/rewinds", "train/discarded_batches", "eval/loss",
    # pretrain-finetune (task metrics; summary.json names the run's main one)
    "train/epoch", "eval/accuracy", "eval/f1", "eval/matthews", "eval/pearson", "eval/spearman", "eval/mse",
]
PLOT_TRAINER = ["train/loss", "eval/loss", "eval/accuracy", "eval/f1", "eval/matthews", "eval/pearson",
                "eval/spearman"]
# Runs written before objective.json existed: their objective metrics are found by name.
LEGACY_PLOT_SUFFIXES = ("_loss", "_acc")
LEGACY_BEST_METRIC = "eval/mlm_acc"
BEST_METRIC = LEGACY_BEST_METRIC
OBJECTIVE_FILE = "objective.json"
SUMMARY_FILE = "summary.json"


class MetricsError(Exception):
    """A user-facing problem with a run's metrics file (reported in one line)."""


class Downsampler:
    """Keep at most ~max_points (step, value) pairs spread evenly over the stream."""

    def __init__(self, max_points: int):
        self.max_points = max(2, max_points)
        self.stride = 1
        self.seen = 0
        self.points: list[tuple[int, float]] = []

    def add(self, step: int, value: float) -> None:
        if self.seen % self.stride == 0:
            self.points.append((step, value))
            if len(self.points) >= 2 * self.max_points:
                self.points = self.points[::2]
                self.stride *= 2
        self.seen += 1


@dataclass
class RunCurves:
    name: str
    path: Path
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    last: dict[str, tuple[int, float]] = field(default_factory=dict)
    best: Optional[tuple[int, float]] = None      # (step, value) of max best_metric
    best_metric: str = BEST_METRIC
    summary: dict = field(default_factory=dict)   # summary.json (fine-tuning: method, trainable params, ...)
    objective: dict = field(default_factory=dict)  # objective.json (pretraining: its metrics, shown, primary)
    last_step: Optional[int] = None
    lines: int = 0
    skipped_torn_tail: bool = False
    nonfinite: dict[str, int] = field(default_factory=dict)   # metric -> how many values were NaN/inf


def read_run(run_dir: str | Path, max_points: int = 2000, smooth: int = 1) -> RunCurves:
    """Read <run_dir>/metrics.jsonl. `smooth` = trailing moving-average window for
    the plotted non-eval curves (last/best values stay exact).

    Raises MetricsError for a missing dir/file or a malformed line (named file:line). One
    exception: an unterminated *last* line is what a crash mid-write leaves, so it is skipped
    (reported via `skipped_torn_tail`) rather than making a crashed run uncomparable.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MetricsError(f"{run_dir}: no such run directory")
    path = run_dir / FILENAME
    if not path.is_file():
        raise MetricsError(f"{path}: no metrics file (was the run started with this code?)")
    run = RunCurves(name=run_dir.resolve().name, path=path)
    run.summary = _summary(run_dir / SUMMARY_FILE)
    run.objective = _summary(run_dir / OBJECTIVE_FILE)
    run.best_metric = str(run.summary.get("primary_metric") or run.objective.get("primary") or LEGACY_BEST_METRIC)
    samplers: dict[str, Downsampler] = {}
    windows: dict[str, deque] = {}
    with open(path, "rb") as f:
        lineno = 0
        for raw in f:
            lineno += 1
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
                step = rec.get("step")
                if not isinstance(step, int) or isinstance(step, bool):
                    raise ValueError("missing integer 'step'")
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                why = f"invalid JSON at column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else str(e)
                if not raw.endswith(b"\n"):  # only the file's last line can lack one
                    run.skipped_torn_tail = True
                    break
                raise MetricsError(f"{path}:{lineno}: malformed line ({why})") from None
            run.lines += 1
            run.last_step = step
            flags = rec.get(NONFINITE_KEY) if isinstance(rec.get(NONFINITE_KEY), dict) else {}
            for key, value in rec.items():
                if value is None and flags.get(key) in ("nan", "inf", "-inf"):
                    value = float(flags[key])
                if key in ("step", "time") or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                value = float(value)
                run.last[key] = (step, value)
                if not math.isfinite(value):
                    run.nonfinite[key] = run.nonfinite.get(key, 0) + 1
                    continue
                if key == run.best_metric and (run.best is None or value > run.best[1]):
                    run.best = (step, value)
                if smooth > 1 and not key.startswith("eval/"):  # eval points are sparse averages already
                    win = windows.setdefault(key, deque(maxlen=smooth))
                    win.append(value)
                    value = sum(win) / len(win)
                samplers.setdefault(key, Downsampler(max_points)).add(step, value)
    if run.lines == 0:
        raise MetricsError(f"{path}: no metrics logged yet")
    run.curves = {k: s.points for k, s in samplers.items()}
    return run


def _summary(path: Path) -> dict:
    """summary.json if present and readable (it is optional: runs still training have none)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def objective_metrics(run: RunCurves, phase: str = "") -> list[str]:
    """The run's objective metrics as logged (train/<m>, eval/<m>; `phase` "train" or "eval" for
    one of them), in the objective's order; for an older run without objective.json, the logged
    train/eval metrics whose names end in _loss or _acc."""
    phases = (phase,) if phase else ("train", "eval")
    if run.objective:
        names = [f"{p}/{m}" for p in phases for m in run.objective.get("metrics", [])]
        return [n for n in names if n in run.last or n in run.curves]
    logged = sorted(set(run.last) | set(run.curves))
    return [k for k in logged if k.split("/", 1)[0] in phases and k.endswith(LEGACY_PLOT_SUFFIXES)]
