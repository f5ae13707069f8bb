"""Metric tracking: JSONL (always), TensorBoard, wandb (offline unless a key is configured).

The trainer uses only `build_tracker` and the returned `Tracker`; see docs/tracking.md.
Names resolve lazily so `pretrain-compare` (which only needs reader.py) does not pay for
importing accelerate/torch.
"""
from __future__ import annotations

__all__ = ["TrackerConfig", "Tracker", "NullTracker", "build_tracker"]


def __getattr__(name: str):
    if name == "TrackerConfig":
        from .config import TrackerConfig
        return TrackerConfig
    if name in ("Tracker", "NullTracker", "build_tracker"):
        from . import tracker
        return getattr(tracker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
