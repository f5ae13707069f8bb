"""Progress bars on rank 0 only (tqdm); other ranks print nothing per step.

`Progress` counts steps. `BudgetProgress` (pretraining) follows the budget that binds: steps when
only `trainer.max_steps` bounds the run, else the percentage used of the tokens or time budget
closest to its end, so a run bounded by `max_time` shows the time left and an ETA from it, not
from a far `max_steps`.
"""
from __future__ import annotations

import sys
from typing import Optional


def _bar(**kwargs):
    from tqdm.auto import tqdm

    # stdout: the launcher keeps rank stderr in log files only.
    # Under torchrun stdout is a pipe and every refresh becomes a line: refresh rarely then.
    interval = 0.1 if sys.stdout.isatty() else 15.0
    return tqdm(dynamic_ncols=True, file=sys.stdout, mininterval=interval, maxinterval=max(interval, 10.0), **kwargs)


class Progress:
    def __init__(self, total: Optional[int], initial: int, enabled: bool):
        self._bar = _bar(total=total, initial=initial, desc="train", unit="step") if enabled else None

    def update(self, step: int, loss: Optional[float]) -> None:
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class BudgetProgress:
    def __init__(self, budget, state, enabled: bool):
        self._budget = budget
        self._steps = None
        self._bar = None
        if budget.max_tokens is None and budget.max_seconds is None:
            self._steps = Progress(budget.max_steps, state.step, enabled)
        elif enabled:
            self._bar = _bar(total=100.0, desc=self._desc(state), unit="%",
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
            self._bar.update(self._percent(state))

    def _percent(self, state) -> float:
        return round(100.0 * self._budget.fraction(state.step, state.consumed_tokens, state.train_seconds), 2)

    def _desc(self, state) -> str:
        key = self._budget.binding(state.step, state.consumed_tokens, state.train_seconds)
        return f"train ({self._budget.describe(key)})"

    def update(self, state, loss: Optional[float]) -> None:
        if self._steps is not None:
            self._steps.update(state.step, loss)
        if self._bar is None:
            return
        self._bar.set_description_str(self._desc(state), refresh=False)
        self._bar.update(self._percent(state) - self._bar.n)
        postfix = {"step": state.step}
        if loss is not None:
            postfix["loss"] = f"{loss:.4f}"
        self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        for bar in (self._steps, self._bar):
            if bar is not None:
                bar.close()
