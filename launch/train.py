"""`pretrain-launch`: compose the config once, write the run directory, start the ranks.

Hydra composes and validates here, in one process; the ranks read `runs/<name>/config.yaml`
(Hydra under torchrun would make one output dir per process). Where the ranks run is the
launcher's business (launch/launcher.py: local torchrun or a SLURM job). Multirun (`-m`) starts
one run per combination, named `<run.name>-<job number>`.
"""
from __future__ import annotations

import io
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from launch.errors import one_line_errors
from launch.launcher import launcher_for
from launch.preflight import preflight
from launch.rundir import prepare_run_dir, run_dir_path

PROG = "pretrain-launch"


def _strip_hydra(cfg: DictConfig) -> DictConfig:
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    return OmegaConf.create(container)


def launch(cfg: DictConfig) -> int:
    from pretrain.train.config import validate

    cfg = validate(_strip_hydra(cfg))
    hc = HydraConfig.get() if HydraConfig.initialized() else None
    if hc is not None and hc.mode == RunMode.MULTIRUN:
        cfg.run.name = f"{cfg.run.name}-{hc.job.num}"
    launcher = launcher_for(cfg.cluster.kind)
    launcher.check(cfg, submit=not cfg.run.dry_run)
    preflight(cfg)
    if cfg.run.dry_run:
        print(OmegaConf.to_yaml(cfg))
        print(launcher.describe(cfg, run_dir_path(cfg)))
        return 0
    return launcher.launch(cfg, prepare_run_dir(cfg))


@hydra.main(config_path="pkg://conf", config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    with one_line_errors(PROG):
        code = launch(cfg)
    if code:
        raise SystemExit(code)


def main() -> None:
    """Hydra reports composition errors (unknown key, missing preset) over several lines; we
    keep Python-level stderr until the end and condense such a report into one line."""
    captured = io.StringIO()
    real_stderr, sys.stderr = sys.stderr, captured
    code = 0
    try:
        _hydra_main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.stderr = real_stderr
    text = captured.getvalue()
    if code and text and not text.startswith(f"{PROG}: error:"):
        text = f"{PROG}: error: {condense_hydra_error(text)}\n"
    sys.stderr.write(text)
    raise SystemExit(code)


def condense_hydra_error(text: str) -> str:
    noise = ("Set the environment variable HYDRA_FULL_ERROR", "object_type=", "full_key:")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(noise)]
    return "; ".join(lines) if lines else "configuration error"


if __name__ == "__main__":
    main()
