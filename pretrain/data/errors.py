"""The one user-facing error type of `pretrain.data` (caught by `launch.errors`)."""
from __future__ import annotations


class DataError(ValueError):
    """A data problem the user can fix (wrong path, tokenizer mismatch, bad cursor); one line."""
