"""`pretrain-launch`: compose the config once, write the run directory, start the ranks.

Hydra composes and validates here, in one process; the ranks read `runs/<name>/config.yaml`
(Hydra under torchrun would make one output dir per process). Multirun (`-m`) starts one run
per combination, named `<run.name>-<job number>`.
"""
from __future__ import annotations

import shlex
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from launch.errors import condense_hydra_error, one_line_errors, run_hydra_cli  # noqa: F401 (re-exported)
from launch.local import run_local, torchrun_command
from launch.preflight import preflight
from launch.rundir import prepare_run_dir

PROG = "pretrain-launch"


def _strip_hydra(cfg: DictConfig) -> DictConfig:
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    return OmegaConf.create(container)


def launch(cfg: DictConfig) -> int:
    from pretrain.train.config import ConfigError, validate

    cfg = validate(_strip_hydra(cfg))
    hc = HydraConfig.get() if HydraConfig.initialized() else None
    if hc is not None and hc.mode == RunMode.MULTIRUN:
        cfg.run.name = f"{cfg.run.name}-{hc.job.num}"
    preflight(cfg)
    if cfg.run.dry_run:
        print(OmegaConf.to_yaml(cfg))
        if cfg.cluster.kind == "local":
            print("would run: " + shlex.join(torchrun_command(cfg, f"{cfg.run.root}/{cfg.run.name}", port=29500)))
        else:
            from launch.slurm import render_sbatch

            print(render_sbatch(cfg, f"{cfg.run.root}/{cfg.run.name}"))
        return 0
    if cfg.cluster.kind == "slurm":
        from launch.slurm import submit

        run_dir = prepare_run_dir(cfg)
        return submit(cfg, run_dir)
    if cfg.cluster.nnodes != 1:
        raise ConfigError(
            f"config key 'cluster.nnodes' = {cfg.cluster.nnodes}; cluster=local starts one node, use cluster=slurm for more"
        )
    run_dir = prepare_run_dir(cfg)
    print(f"run directory: {run_dir}", flush=True)
    code = run_local(cfg, run_dir)
    if code != 0:
        from launch.worker import first_rank_error

        message = first_rank_error(run_dir) or f"the ranks exited with code {code}; see {run_dir}/logs/"
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return code


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
