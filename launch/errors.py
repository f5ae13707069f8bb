"""The one place that turns user-caused exceptions into a one-line message and exit code 2."""
from __future__ import annotations

import sys
from contextlib import contextmanager


def user_error_types() -> tuple[type[BaseException], ...]:
    # Imported lazily: each package defines its own error type; all subclass ValueError.
    types: list[type[BaseException]] = []
    for module, name in (
        ("pretrain.train.config", "ConfigError"),
        ("pretrain.shardformat", "ShardFormatError"),
        ("pretrain.data.errors", "DataError"),
        ("parallel.checkpoint", "CheckpointError"),
        ("pretrain.prepare.config", "PrepareError"),
        ("pretrain.train.checkpoint_manager", "ResumeError"),
        ("pretrain.hf.export", "ExportError"),
        ("pretrain.train.nonfinite", "NonFiniteError"),
    ):
        try:
            mod = __import__(module, fromlist=[name])
            types.append(getattr(mod, name))
        except (ImportError, AttributeError):
            continue
    return tuple(types)


@contextmanager
def one_line_errors(prog: str):
    """Report user errors as `prog: error: message` (exit 2) instead of a traceback."""
    try:
        yield
    except user_error_types() as e:  # noqa: B030 - tuple computed at runtime
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
