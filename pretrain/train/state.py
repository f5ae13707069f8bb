"""TrainState: the trainer's own part of a checkpoint (the engine saves model and optimizer)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class TrainState:
    step: int = 0                   # batches consumed; never goes back (a rewind does not undo it)
    consumed_samples: int = 0
    consumed_tokens: int = 0
    train_seconds: float = 0.0      # training wall-clock so far, all launches (max_time, budget-placed schedules)
    data_cursor: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)   # a mixture: {name: {"samples": n, "tokens": n}} consumed
    phase: int = 0                  # trainer.phases: the phase the last step ran in, and where it started
    phase_start_step: int = 0
    phase_start_tokens: int = 0
    # [step, tokens, seconds] where the current lr schedule segment started (a phase's, a branch's
    # restart); [] = the run's schedule from step 0
    schedule_start: list = field(default_factory=list)
    tracker: dict = field(default_factory=dict)
    config_hash: str = ""
    seed: int = 0
    world_size: int = 1
    # Non-finite steps and loss spikes (pretrain/train/nonfinite.py); saved so a resumed run
    # decides exactly as the uninterrupted one would have.
    skipped_updates: int = 0        # steps whose optimizer update was not applied (fp16 overflow, non-finite)
    nonfinite_steps: int = 0
    nonfinite_streak: int = 0       # non-finite steps in a row (trainer.max_skips)
    loss_spikes: int = 0
    loss_window: list = field(default_factory=list)   # recent finite losses (the spike detector's median)
    discarded: list = field(default_factory=list)     # [first, last] step ranges: batches consumed whose updates are not in the model
    rewinds: list = field(default_factory=list)       # {"at": step, "to": checkpoint step, "why": ...}

    def to_dict(self) -> dict:
        return asdict(self)

    def restore(self, saved: dict) -> None:
        """Take what a checkpoint saved, except what describes the *current* launch."""
        for f in fields(self):
            if f.name in saved and f.name not in ("config_hash", "world_size"):
                setattr(self, f.name, saved[f.name])

    def discard(self, first: int, last: int) -> None:
        """Record batches [first, last] as consumed without their updates (merged, never counted twice)."""
        ranges = sorted([list(r) for r in self.discarded] + [[first, last]])
        merged: list[list[int]] = []
        for lo, hi in ranges:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.discarded = merged

    @property
    def discarded_batches(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.discarded)
