"""Metric tracking: JSONL (always), TensorBoard, wandb (offline unless a key is configured).

The trainer uses only `build_tracker` and the returned `Tracker`; see docs/tracking.md.
"""
from .config import TrackerConfig
from .tracker import NullTracker, Tracker, build_tracker

__all__ = ["TrackerConfig", "Tracker", "NullTracker", "build_tracker"]
