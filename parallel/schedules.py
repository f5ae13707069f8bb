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
"""
from __future__ import annotations

import math

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

    def __init__(self, cfg: ScheduleConfig, total_steps: int):
        if cfg.name not in SCHEDULES:
            raise ValueError(f"schedule.name={cfg.name!r}: expected one of {', '.join(SCHEDULES)}")
        total = int(cfg.total_steps or total_steps)
        if total <= 0:
            raise ValueError(f"schedule total_steps={total}: must be > 0")
        if not 0.0 <= cfg.min_lr_ratio <= 1.0:
            raise ValueError(f"schedule.min_lr_ratio={cfg.min_lr_ratio}: must be in [0, 1]")
        self.name = cfg.name
        self.total = total
        self.warmup = min(warmup_steps(cfg, total), total)
        self.min_ratio = float(cfg.min_lr_ratio)
        self.decay_start = max(self.warmup, total - int(round(cfg.decay_fraction * total)))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.name == "constant":
            return 1.0
        start = self.decay_start if self.name == "wsd" else self.warmup
        if step < start:
            return 1.0
        p = min(1.0, (step - start) / max(1, self.total - start))
        if self.name == "cosine":
            return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
        return 1.0 - (1.0 - self.min_ratio) * p  # linear, wsd


def build_scheduler(optimizer: Optimizer, cfg: ScheduleConfig, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, LrMultiplier(cfg, total_steps))
