"""When to stop: max steps, tokens or wall-clock time, whichever comes first."""
from __future__ import annotations

import time
from typing import Optional

from pretrain.train.config import parse_duration


class Budget:
    def __init__(self, max_steps: Optional[int], max_tokens: Optional[int], max_time: Optional[str]):
        self.max_steps = max_steps
        self.max_tokens = max_tokens
        self.max_seconds = parse_duration(max_time) if max_time is not None else None
        self._start = time.monotonic()

    def out_of_time(self) -> bool:
        """This process's clock only: callers must agree across ranks (any rank out -> all stop),
        or one rank would checkpoint while another steps. A resumed run gets a new budget."""
        return self.max_seconds is not None and time.monotonic() - self._start >= self.max_seconds

    def exhausted(self, step: int, tokens: int, out_of_time: bool = False) -> Optional[str]:
        """The reason to stop, or None; `step` and `tokens` are global, so every rank agrees."""
        if self.max_steps is not None and step >= self.max_steps:
            return f"max_steps={self.max_steps}"
        if self.max_tokens is not None and tokens >= self.max_tokens:
            return f"max_tokens={self.max_tokens}"
        if out_of_time:
            return f"max_time={self.max_seconds:.0f}s"
        return None

    @property
    def total_steps_hint(self) -> Optional[int]:
        return self.max_steps
