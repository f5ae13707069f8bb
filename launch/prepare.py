"""`pretrain-prepare`: the Hydra app around pretrain.prepare.pipeline.run.

User-caused problems (unknown key, bad value, missing file, bad record in strict mode) print one
line `pretrain-prepare: error: <msg>` and exit 2 - no traceback. Hydra's own composition errors
(e.g. an override of a key that does not exist) are multi-line and exit 1, so the overrides are
composed once up front to turn those into the same one-line error. Hydra writes no output dir or
log files for this app (conf/prepare.yaml).
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

PROG = "pretrain-prepare"


def _fail(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    sys.exit(2)


def _preflight(argv: list[str]) -> None:
    """Compose the plain overrides with Hydra's compose API to report bad ones in one line."""
    if any(a.startswith("-") for a in argv):
        return  # --help, --cfg, -m ...: Hydra's own flags, let it handle them
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module(config_module="conf", version_base="1.3"):
            compose(config_name="prepare", overrides=argv, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        parts = [str(e).strip().splitlines()[0]] if str(e).strip() else []
        cause = e.__cause__
        if cause is not None and str(cause).strip():
            parts.append(str(cause).strip().splitlines()[0])
        _fail("; ".join(parts) or type(e).__name__)


@hydra.main(config_path="../conf", config_name="prepare", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    from pretrain.prepare.config import PrepareError, validate_config
    from pretrain.prepare.pipeline import run

    try:
        run(validate_config(cfg), echo=lambda line: print(line, file=sys.stderr))
    except PrepareError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the previous output (if any) is untouched", file=sys.stderr)
        sys.exit(130)


def main() -> None:
    _preflight(sys.argv[1:])
    _app()


if __name__ == "__main__":
    main()
