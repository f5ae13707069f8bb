"""What the trainer does with a step that is not finite, or whose loss spikes.

`trainer.on_nonfinite` (a step whose loss, or gradient norm, is NaN/inf on any rank):
  stop    (default) the run ends with one line naming the step, the last good checkpoint and
          what to try; nothing is saved, so `latest` still names the last good checkpoint.
  skip    the engine already dropped the step's update (parallel/update_guard.py); training
          goes on with the next batch, at most `trainer.max_skips` steps in a row.
  rewind  the newest checkpoint is loaded into the running engine and training goes on with the
          batches after the bad one, at most `trainer.max_rewinds` times per run.
`trainer.loss_spike`: train/loss_ratio = loss / median of the last `window` finite losses is
logged always; after `warmup` steps a ratio above `factor` is a spike (warned and counted), and
with `action: rewind` it rewinds like a non-finite step (same `max_rewinds` budget).

Every input is global: the engine reduces the loss and gradient norm over ranks, and the loop's
per-step all-reduce adds each rank's own flag, so every rank takes the same decision in the same
step. Everything the decisions depend on lives in TrainState (saved), so a resumed run decides
as the uninterrupted one would have.

Step counters across a rewind: TrainState.step counts batches consumed and never goes back
(metrics steps never repeat; checkpoint names and budgets use it); the engine's own step
(optimizer updates, the LR schedule, dropout seeds) goes back to the checkpoint's. The batches
whose updates are not in the model are recorded as ranges in TrainState.discarded.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable, Optional

NONFINITE_POLICIES = ("stop", "skip", "rewind")
SPIKE_ACTIONS = ("log", "rewind")


class NonFiniteError(ValueError):
    """Training diverged and the policy says stop (user-facing: one line)."""


class NonFiniteState(Exception):
    """Raised by CheckpointManager.save instead of writing weights or optimizer state that are
    not finite (every rank raises it: the check is one all-reduce)."""


@dataclass
class Verdict:
    event: Optional[str] = None        # "nonfinite" | "skipped" | "rewound" | "loss_spike": log this step
    stop: Optional[str] = None         # the one-line reason to stop (policy stop, or a limit reached)
    loss_ratio: Optional[float] = None


def spike_ratio(window: list, loss: float) -> Optional[float]:
    """loss / median of `window` (None while the window is empty or its median is not positive)."""
    if not window or not math.isfinite(loss):
        return None
    median = statistics.median(window)
    return loss / median if median > 0 else None


class Watchdog:
    """Applies the policies to each step; built once per launch by `from_config`."""

    def __init__(self, policy: str, max_skips: int, max_rewinds: int, spike, state, checkpoints,
                 hints: dict, log: Callable[[str], None] = print):
        self.policy, self.max_skips, self.max_rewinds = policy, max_skips, max_rewinds
        self.on_rewind = None           # callable(to_step, step) after a checkpoint was reloaded
        self.spike = spike              # LossSpikeConfig: factor, window, warmup, action
        self.state = state              # TrainState
        self.checkpoints = checkpoints  # CheckpointManager: latest_step(), root, rewind(engine)
        self.hints = hints              # lr, grad_clip, dtype: what the stop message suggests
        self.log = log

    @classmethod
    def from_config(cls, cfg, state, checkpoints, log=print) -> "Watchdog":
        t = cfg.trainer
        hints = {"lr": cfg.optim.lr, "grad_clip": cfg.optim.grad_clip, "dtype": cfg.precision.dtype}
        return cls(t.on_nonfinite, t.max_skips, t.max_rewinds, t.loss_spike, state, checkpoints, hints, log)

    # ------------------------------------------------------------------ per step
    def check(self, engine, step: int, metrics: dict, nonfinite: bool) -> Verdict:
        """After the step's reduction, on every rank alike. May rewind `engine`."""
        s = self.state
        s.skipped_updates += int(metrics.get("skipped", 0) > 0)
        if nonfinite:
            s.nonfinite_steps += 1
            return self._nonfinite(engine, step, metrics)
        s.nonfinite_streak = 0
        loss = metrics["loss"]
        ratio = spike_ratio(s.loss_window, loss)
        if ratio is not None and step > self.spike.warmup and ratio > self.spike.factor:
            s.loss_spikes += 1
            why = (f"loss spike ({loss:.4g} = {ratio:.1f}x the median of the last {len(s.loss_window)} "
                   f"losses, trainer.loss_spike.factor={self.spike.factor:g})")
            if self.spike.action == "rewind":
                verdict = self._rewind(engine, step, why)
                verdict.loss_ratio = ratio
                return verdict
            self.log(f"warning: {why} at step {step}")
            verdict = Verdict(event="loss_spike", loss_ratio=ratio)
        else:
            verdict = Verdict(loss_ratio=ratio)
        s.loss_window = (list(s.loss_window) + [loss])[-self.spike.window:]
        return verdict

    def unsaveable(self, engine, step: int) -> Verdict:
        """The save at `step` found weights or optimizer state that are not finite (the step's
        loss and gradient norm were finite, its update was not): rewind, or stop."""
        why = "the weights or optimizer state became non-finite (with a finite loss and gradient norm)"
        if self.policy == "rewind":
            return self._rewind(engine, step, why)
        return Verdict(event="nonfinite", stop=self._stop_message(step, why))

    def metrics(self, verdict: Verdict) -> dict:
        s = self.state
        out = {"train/skipped_updates": s.skipped_updates, "train/nonfinite_steps": s.nonfinite_steps,
               "train/rewinds": len(s.rewinds), "train/discarded_batches": s.discarded_batches,
               "train/loss_spikes": s.loss_spikes}
        if verdict.loss_ratio is not None:
            out["train/loss_ratio"] = verdict.loss_ratio
        return out

    # ------------------------------------------------------------------ policies
    def _nonfinite(self, engine, step: int, metrics: dict) -> Verdict:
        what = f"non-finite loss or gradient norm (loss={metrics.get('loss')}, grad_norm={metrics.get('grad_norm')})"
        if self.policy == "stop":
            return Verdict(event="nonfinite", stop=self._stop_message(step, what))
        if self.policy == "rewind":
            return self._rewind(engine, step, what)
        s = self.state
        if not engine.state_is_finite():  # collective: every rank is here in this step
            return Verdict(event="nonfinite", stop=self._stop_message(
                step, f"{what}, and the weights themselves are not finite, so skipping cannot help "
                      "(trainer.on_nonfinite=rewind reloads a checkpoint)"))
        s.nonfinite_streak += 1
        if s.nonfinite_streak > self.max_skips:
            return Verdict(event="nonfinite", stop=self._stop_message(
                step, f"{what}: {s.nonfinite_streak} non-finite steps in a row (trainer.max_skips={self.max_skips})"))
        s.discard(step, step)
        self.log(f"warning: {what} at step {step}: update dropped, continuing with the next batch "
                 f"({s.nonfinite_streak} in a row, trainer.max_skips={self.max_skips})")
        return Verdict(event="skipped")

    def _rewind(self, engine, step: int, why: str) -> Verdict:
        s = self.state
        if len(s.rewinds) >= self.max_rewinds:
            return Verdict(event="nonfinite", stop=self._stop_message(
                step, f"{why}, after {len(s.rewinds)} rewinds (trainer.max_rewinds={self.max_rewinds})"))
        found = self.checkpoints.rewind(engine)
        if found is None:
            return Verdict(event="nonfinite", stop=self._stop_message(step, f"{why}; no checkpoint to rewind to yet"))
        to_step, path = found
        if self.on_rewind is not None:  # e.g. progressive stacking re-grows what the checkpoint predates
            self.on_rewind(to_step, step)
        s.rewinds.append({"at": step, "to": to_step, "why": why})
        s.discard(to_step + 1, step)
        s.nonfinite_streak = 0
        self.log(f"warning: {why} at step {step}: rewound to {path} (optimizer step {engine.global_step}); "
                 f"batches {to_step + 1}-{step} discarded, training continues with the next one "
                 f"(rewind {len(s.rewinds)} of at most {self.max_rewinds})")
        return Verdict(event="rewound")

    def _stop_message(self, step: int, what: str) -> str:
        latest = self.checkpoints.latest_step()
        if latest is None:
            where = "no checkpoint was written yet"
        else:
            where = f"the last good checkpoint is {self.checkpoints.root}/step_{latest:06d} (still `latest`)"
        tries = [f"a lower optim.lr (now {self.hints['lr']:g})"]
        if not self.hints["grad_clip"]:
            tries.append("optim.grad_clip=1.0 (clipping is off)")
        if self.hints["dtype"] == "fp16":
            tries.append("precision=bf16 instead of fp16")
        if self.policy == "stop":
            tries.append("trainer.on_nonfinite=skip|rewind")
        suggestion = tries[0] if len(tries) == 1 else f"{', '.join(tries[:-1])} or {tries[-1]}"
        return f"training diverged at step {step}: {what}; stopped without saving; {where}; try {suggestion}"
