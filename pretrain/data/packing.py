"""Examples -> rows of ``max_seq_len`` positions: one example per row, or several (packing).

Why a packer of our own: the packers of the libraries we use (MosaicML's `BinPackCollator`,
transformers' `DataCollatorWithFlattening`) pack whatever batch they are handed, with no notion
of a resumable cursor; ours must know which examples it still holds so a checkpoint names them.

Best fit over a bounded look-ahead (the online packer MosaicML and ModernBERT use, anchored): the
packer holds up to `lookahead` examples in reading order; a row starts with the *oldest* one
(so no example waits more than `lookahead` rows, and the examples read before the oldest are
all emitted: the cursor's position) and is then filled, largest example that fits first, from
the rest of the buffer. Pure and deterministic: the same examples in the same order give the
same rows, which is what makes a restored cursor exact.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pretrain.data.examples import Example


def example_length(ex: Example) -> int:
    """Positions the example takes in a row: [CLS] A [SEP] (B [SEP])."""
    return len(ex.a) + 2 + (len(ex.b) + 1 if ex.b is not None else 0)


class Packer:
    """`add(example, ref)` in reading order; `ready()` says a row may be taken with `pop_row()`.

    `refs` are the caller's opaque tags (the stream's position of each example), returned with
    the row so the caller can keep its cursor; `oldest_ref()` is the first example not emitted.
    lookahead 1 = one example per row (no packing).
    """

    def __init__(self, capacity: int, lookahead: int):
        if lookahead < 1:
            raise ValueError(f"data.pack_lookahead={lookahead}: must be >= 1")
        self.capacity, self.lookahead = int(capacity), int(lookahead)
        self.examples: list[Example] = []
        self.refs: list[Any] = []
        self.lengths: list[int] = []

    def __len__(self) -> int:
        return len(self.examples)

    def add(self, ex: Example, ref: Any) -> None:
        n = example_length(ex)
        if n > self.capacity:
            raise ValueError(f"example of {n} positions in a row of {self.capacity}")
        self.examples.append(ex)
        self.refs.append(ref)
        self.lengths.append(n)

    def ready(self) -> bool:
        return len(self.examples) >= self.lookahead

    def oldest_ref(self) -> Any:
        return self.refs[0] if self.refs else None

    def pop_row(self) -> tuple[list[Example], list[Any]]:
        """The oldest example, then best fit (largest that fits; the earliest of equals)."""
        take = [0]
        space = self.capacity - self.lengths[0]
        if self.lookahead > 1 and len(self.lengths) > 1:
            lengths = np.asarray(self.lengths[1:])
            free = np.ones(len(lengths), dtype=bool)
            while space > 0:
                fits = np.where(free & (lengths <= space), lengths, -1)
                best = int(np.argmax(fits))
                if fits[best] < 0:
                    break
                free[best] = False
                take.append(best + 1)
                space -= int(lengths[best])
        order = sorted(take)  # the row keeps reading order: deterministic, and easy to read
        row = [self.examples[i] for i in order]
        refs = [self.refs[i] for i in order]
        keep = set(take)
        self.examples = [e for i, e in enumerate(self.examples) if i not in keep]
        self.refs = [r for i, r in enumerate(self.refs) if i not in keep]
        self.lengths = [n for i, n in enumerate(self.lengths) if i not in keep]
        return row, refs

