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
        ("pretrain.finetune.readers", "TaskDataError"),
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


def condense_hydra_error(text: str) -> str:
    noise = ("Set the environment variable HYDRA_FULL_ERROR", "object_type=", "full_key:")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(noise)]
    return "; ".join(lines) if lines else "configuration error"


_held: dict = {}


def run_hydra_cli(prog: str, hydra_main) -> None:
    """Run a `@hydra.main` app; Hydra reports composition errors (unknown key, missing preset) over
    several lines, so Python-level stderr is held until the end (or until the app calls
    `release_stderr()` once composition is over) and such a report condensed into one
    `prog: error: ...` line. Shared by pretrain-launch and pretrain-finetune."""
    import io

    captured = io.StringIO()
    real_stderr, sys.stderr = sys.stderr, captured
    _held.update(real=real_stderr, captured=captured)
    code = 0
    try:
        hydra_main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.stderr = real_stderr
        released = _held.pop("released", False)
        _held.clear()
    text = "" if released else captured.getvalue()
    if code and text and not text.startswith(f"{prog}: error:"):
        text = f"{prog}: error: {condense_hydra_error(text)}\n"
    sys.stderr.write(text)
    raise SystemExit(code)


def release_stderr() -> None:
    """Composition succeeded: give the app its real stderr back (what was held is written first),
    so a long in-process run shows warnings live and an internal crash keeps its traceback."""
    if "real" in _held and not _held.get("released"):
        sys.stderr = _held["real"]
        sys.stderr.write(_held["captured"].getvalue())
        _held["released"] = True
