"""`pretrain-finetune`: compose the fine-tuning config once, write the run directory, train.

One process runs in this process; `cluster.nproc > 1` starts the ranks with torchrun (the same
launcher as pretraining) and each rank reads runs/<name>/config.yaml. `precision=auto` is resolved
here, for this machine's device, and the resolved dtype is what config.yaml records. Multirun (`-m`)
starts one run per combination, named `<run.name>-<job number>`.

`model=<dir>` on the command line is short for `model.path=<dir>`: `model` is also the name of
pretraining's preset group in conf/, so Hydra would read `model=<dir>` as a preset choice.
"""
from __future__ import annotations

import shlex
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from launch.errors import one_line_errors, release_stderr, run_hydra_cli
from launch.rundir import prepare_run_dir
from launch.train import _strip_hydra

PROG = "pretrain-finetune"


def resolve_precision_for(cfg: DictConfig, log=print) -> DictConfig:
    from parallel.device import compute_device
    from parallel.precision import resolve_precision
    from pretrain.train.config import ConfigError

    try:
        choice = resolve_precision(cfg.precision.dtype, compute_device())
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None
    log(f"precision: {choice.reason}")
    if choice.warning:
        log(f"warning: {choice.warning}")
    cfg.precision.dtype = choice.dtype
    return cfg


def launch(cfg: DictConfig) -> int:
    from pretrain.finetune.config import validate

    cfg = validate(_strip_hydra(cfg))
    hc = HydraConfig.get() if HydraConfig.initialized() else None
    if hc is not None and hc.mode == RunMode.MULTIRUN:
        cfg.run.name = f"{cfg.run.name}-{hc.job.num}"
    cfg = resolve_precision_for(cfg)
    world = cfg.cluster.nproc * cfg.cluster.nnodes
    if cfg.cluster.nnodes != 1:
        from pretrain.train.config import ConfigError

        raise ConfigError(f"config key 'cluster.nnodes' = {cfg.cluster.nnodes}; pretrain-finetune starts processes on one machine")
    if cfg.run.dry_run:
        print(OmegaConf.to_yaml(cfg))
        if world > 1:
            from launch.local import torchrun_command

            print("would run: " + shlex.join(torchrun_command(cfg, f"{cfg.run.root}/{cfg.run.name}", port=29500)))
        return 0
    run_dir = prepare_run_dir(cfg)
    print(f"run directory: {run_dir}", flush=True)
    if world == 1:
        from pretrain.finetune.train import finetune

        finetune(cfg, run_dir)
        return 0
    from launch.local import run_local
    from launch.worker import first_rank_error
    from pretrain.finetune.model import resolve_backbone

    resolve_backbone(cfg.model.path, run_dir)  # export a run dir's checkpoint once, before the ranks start
    code = run_local(cfg, run_dir)
    if code != 0:
        message = first_rank_error(run_dir) or f"the ranks exited with code {code}; see {run_dir}/logs/"
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return code


@hydra.main(config_path="pkg://conf", config_name="finetune", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    release_stderr()
    with one_line_errors(PROG):
        code = launch(cfg)
    if code:
        raise SystemExit(code)


def shorthand(argv: list[str]) -> list[str]:
    """`model=<dir>` -> `model.path=<dir>` (see the module docstring)."""
    return [f"model.path={a[len('model='):]}" if a.startswith("model=") else a for a in argv]


def main() -> None:
    sys.argv = [sys.argv[0], *shorthand(sys.argv[1:])]
    run_hydra_cli(PROG, _hydra_main)


if __name__ == "__main__":
    main()
