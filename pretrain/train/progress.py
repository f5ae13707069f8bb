"""A progress bar on rank 0 only (tqdm); other ranks print nothing per step."""
from __future__ import annotations

from typing import Optional


class Progress:
    def __init__(self, total: Optional[int], initial: int, enabled: bool):
        self._bar = None
        if enabled:
            import sys

            from tqdm.auto import tqdm

            # stdout: the launcher keeps rank stderr in log files only.
            # Under torchrun stdout is a pipe and every refresh becomes a line: refresh rarely then.
            interval = 0.1 if sys.stdout.isatty() else 15.0
            self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                             file=sys.stdout, mininterval=interval, maxinterval=max(interval, 10.0))

    def update(self, step: int, loss: Optional[float]) -> None:
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
