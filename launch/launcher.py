"""The seam between `pretrain-launch` and where the ranks run: one small interface, one module per
cluster kind (launch/local.py: torchrun here; launch/slurm.py: an sbatch job).

    check(cfg, submit)       cluster-specific one-line errors, before anything is written
                             (submit=False for a dry run: nothing is started)
    describe(cfg, run_dir)   what launch() would do (run.dry_run=true prints it)
    launch(cfg, run_dir)     start it; the exit code of the launch command
"""
from __future__ import annotations

from importlib import import_module
from typing import Protocol

from omegaconf import DictConfig

# cluster.kind -> "module:class"; the kinds themselves are pretrain.train.config.CLUSTER_KINDS.
LAUNCHERS = {"local": "launch.local:LocalLauncher", "slurm": "launch.slurm:SlurmLauncher"}


class Launcher(Protocol):
    def check(self, cfg: DictConfig, submit: bool) -> None: ...

    def describe(self, cfg: DictConfig, run_dir: str) -> str: ...

    def launch(self, cfg: DictConfig, run_dir: str) -> int: ...


def launcher_for(kind: str) -> Launcher:
    module, name = LAUNCHERS[kind].split(":")
    return getattr(import_module(module), name)()
