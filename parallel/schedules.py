"""Learning-rate schedules as multipliers of the peak lr, wrapped in torch's LambdaLR.

Why LambdaLR instead of DeepSpeed's schedulers: one definition for every engine path, its state
(last_epoch) is saved/restored by DeepSpeed's checkpoint, and the curves are unit-testable.
Step s (0-based index of the optimizer step about to be taken) uses multiplier f(s):
  warmup    s < W:  (s + 1) / W                       (the W-th step runs at the peak)
  linear:   1 -> min_lr_ratio linearly over [W, T]
  cosine:   min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * p)) / 2
  constant: 1
  wsd:      1 until T - D (D = decay_fraction * T), then linear to min_lr_ratio at T
Beyond T the multiplier stays at its final value.
A segment (`start_segment`: a training phase, a branched decay) restarts a curve at a later step,
optionally at another peak lr (scale).

Placed by budget (`total_steps=None`: a run bounded by tokens or time, cramming's budget-aware
schedules): the same curves over the fraction p of the run's budget used so far, which the
trainer sets before every step (`progress`, then `apply_progress`), so warmup, the stable part and
the decay land where the budget says however many steps fit: warmup p < w (w = warmup_fraction,
lr from 0; `warmup_steps` > 0 still counts steps), decay over the last `decay_fraction` of the
budget (wsd) or from w to 1 (linear, cosine).
"""
from __future__ import annotations

import math
from typing import Optional

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from .config import ScheduleConfig

SCHEDULES = ("linear", "cosine", "constant", "wsd")


def warmup_steps(cfg: ScheduleConfig, total_steps: int) -> int:
    if cfg.warmup_steps > 0:
        return int(cfg.warmup_steps)
    return int(round(cfg.warmup_fraction * total_steps))


class LrMultiplier:
    """Picklable callable (LambdaLR stores callable objects' __dict__ in its state_dict)."""

    def __init__(self, cfg: ScheduleConfig, total_steps: Optional[int]):
        if cfg.name not in SCHEDULES:
            raise ValueError(f"schedule.name={cfg.name!r}: expected one of {', '.join(SCHEDULES)}")
        if not 0.0 <= cfg.min_lr_ratio <= 1.0:
            raise ValueError(f"schedule.min_lr_ratio={cfg.min_lr_ratio}: must be in [0, 1]")
        self.name = cfg.name
        self.min_ratio = float(cfg.min_lr_ratio)
        self.progress = 0.0            # budget fraction used before the next step (by_budget only)
        self.offset = 0                # a segment (start_segment): the scheduler step it starts at
        self.scale = 1.0               # ... and its peak lr relative to the optimizer's lr
        total = cfg.total_steps or total_steps
        self.by_budget = total is None
        if self.by_budget:
            self.warmup = int(cfg.warmup_steps)
            self.warmup_fraction = 0.0 if self.warmup else float(cfg.warmup_fraction)
            self.decay_from = max(self.warmup_fraction, 1.0 - float(cfg.decay_fraction))
            return
        total = int(total)
        if total <= 0:
            raise ValueError(f"schedule total_steps={total}: must be > 0")
        self.total = total
        self.warmup = min(warmup_steps(cfg, total), total)
        self.decay_start = max(self.warmup, total - int(round(cfg.decay_fraction * total)))

    def __call__(self, step: int) -> float:
        return self.scale * self._multiplier(step - self.offset)

    def _multiplier(self, step: int) -> float:
        if self.by_budget:
            return self._at_fraction(step)
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.name == "constant":
            return 1.0
        start = self.decay_start if self.name == "wsd" else self.warmup
        if step < start:
            return 1.0
        return self._decayed(min(1.0, (step - start) / max(1, self.total - start)))

    def _at_fraction(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        p = min(1.0, max(0.0, float(self.progress)))
        if p < self.warmup_fraction:
            return p / self.warmup_fraction
        if self.name == "constant":
            return 1.0
        start = self.decay_from if self.name == "wsd" else self.warmup_fraction
        if p < start:
            return 1.0
        return self._decayed((p - start) / max(1e-12, 1.0 - start))

    def _decayed(self, p: float) -> float:
        """The multiplier a fraction p in [0, 1] through the decay phase."""
        if self.name == "cosine":
            return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
        return 1.0 - (1.0 - self.min_ratio) * p  # linear, wsd


def apply_progress(scheduler: LambdaLR, fraction: float) -> None:
    """Budget-placed schedules: record the budget fraction used so far and set the optimizer's lr
    for the next step from it now (LambdaLR itself would only look at the next scheduler.step())."""
    lrs = []
    for fn, base, group in zip(scheduler.lr_lambdas, scheduler.base_lrs, scheduler.optimizer.param_groups):
        if isinstance(fn, LrMultiplier) and fn.by_budget:
            fn.progress = float(fraction)
            group["lr"] = base * fn(scheduler.last_epoch)
        lrs.append(group["lr"])
    scheduler._last_lr = lrs


def start_segment(scheduler: LambdaLR, cfg: ScheduleConfig, total_steps: Optional[int], scale: float = 1.0) -> None:
    """A new schedule from the next step on (a training phase, a branched decay): `cfg`'s curve
    over `total_steps` steps (None: placed by the progress fraction the caller sets, 0 -> 1 over
    the segment), peaking at `scale` x the optimizer's lr. Kept in the scheduler's state_dict, so
    a resumed run continues the segment it was in."""
    lrs = []
    for i, (base, group) in enumerate(zip(scheduler.base_lrs, scheduler.optimizer.param_groups)):
        fn = LrMultiplier(cfg, total_steps)
        fn.offset, fn.scale = int(scheduler.last_epoch), float(scale)
        scheduler.lr_lambdas[i] = fn
        group["lr"] = base * fn(scheduler.last_epoch)
        lrs.append(group["lr"])
    scheduler._last_lr = lrs


def build_scheduler(optimizer: Optimizer, cfg: ScheduleConfig, total_steps: Optional[int]) -> LambdaLR:
    """total_steps None (and no schedule.total_steps): placed by budget fraction (apply_progress)."""
    return LambdaLR(optimizer, LrMultiplier(cfg, total_steps))
