"""`pretrain-launch`: compose the config once, write the run directory, start the ranks.

Hydra composes and validates here, in one process; the ranks read `runs/<name>/config.yaml`
(Hydra under torchrun would make one output dir per process). Where the ranks run is the
launcher's business (launch/launcher.py: local torchrun or a SLURM job). Multirun (`-m`) starts
one run per combination, named `<run.name>-<job number>`.
"""
from __future__ import annotations


import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from launch.errors import one_line_errors, run_hydra_cli
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
    for line in preflight(cfg, overrides=list(hc.overrides.task) if hc is not None else ()):
        print(line, flush=True)
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
    run_hydra_cli(PROG, _hydra_main)


if __name__ == "__main__":
    main()
