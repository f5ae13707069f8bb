"""Settle a run's `precision.dtype` once, where its ranks will run, and record why.

`precision=auto` is resolved by parallel.precision.resolve_precision on the machine that computes:
- cluster=local: here, by pretrain-launch, before runs/<name>/config.yaml is written;
- cluster=slurm: the login node is not a compute node, so the launcher leaves `auto` in
  config.yaml and the job calls `resolve_run_precision` on the compute node at job start.
Either way config.yaml ends with the concrete dtype, `precision.resolved_from: auto` and
`precision.reason`, and every later start of the run (resume, requeue, a relaunch with the same
run.name) keeps what config.yaml says: a resumed run never re-resolves, so a noisy probe cannot
switch a run's dtype under its checkpoints.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf

from parallel.precision import DTYPES, resolve_precision


def _config_error(message: str):
    from pretrain.train.config import ConfigError

    return ConfigError(f"config: {message}")


def _line(cfg: DictConfig) -> str:
    return f"precision: {cfg.precision.dtype} ({cfg.precision.reason})"


def resolve_run_precision(cfg: DictConfig, device: Optional[torch.device] = None) -> list[str]:
    """Resolve cfg.precision in place for `device` (default: this machine's); the lines to print.

    Already resolved (resolved_from=auto with a concrete dtype): kept as is. auto: resolved,
    resolved_from/reason recorded. Explicit: kept, with its reason and, where it only runs
    emulated here, a warning line with the measured slowdown. fp16 without CUDA: ConfigError.
    """
    p = cfg.precision
    if p.resolved_from == "auto" and p.dtype in DTYPES:
        return [_line(cfg)]
    try:
        choice = resolve_precision(p.dtype, device)
    except ValueError as e:
        raise _config_error(str(e)) from None
    if p.dtype == "auto":
        p.resolved_from = "auto"
    p.dtype, p.reason = choice.dtype, choice.reason
    return [_line(cfg)] + ([f"warning: {choice.warning}"] if choice.warning else [])


def previous_precision(run_dir: str) -> Optional[DictConfig]:
    """The precision section of an existing run's config.yaml, if it holds a concrete dtype."""
    from pretrain.train.rundir import CONFIG_NAME

    path = os.path.join(run_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        return None
    try:
        stored = OmegaConf.load(path)
    except Exception:  # unreadable: the launch's own validation of the run dir reports it
        return None
    previous = stored.get("precision") if isinstance(stored, DictConfig) else None
    if previous is None or previous.get("dtype") not in DTYPES:
        return None
    return previous


def settle_launch_precision(cfg: DictConfig) -> list[str]:
    """What pretrain-launch does with precision before writing config.yaml; the lines to print.

    A relaunch of an existing run (run.fresh=false) that asks for auto keeps the dtype its
    config.yaml already records; an explicit dtype is the user's to change. cluster=slurm leaves
    auto (and the check of an explicit dtype) to the compute node.
    """
    p = cfg.precision
    if p.dtype == "auto" and not cfg.run.fresh:
        previous = previous_precision(os.path.abspath(os.path.join(cfg.run.root, cfg.run.name)))
        if previous is not None:
            p.dtype = previous.dtype
            p.resolved_from = previous.get("resolved_from")
            p.reason = previous.get("reason") or f"{previous.dtype} (kept from the run's config.yaml)"
            return [f"precision: {p.dtype} (kept from the run's config.yaml: a resumed run never re-resolves; "
                    f"{p.reason})"]
    if cfg.cluster.kind == "slurm":  # this login node's CPU says nothing about the compute nodes
        what = "resolved" if p.dtype == "auto" else "checked"
        return [f"precision: {p.dtype} ({what} on the compute node when the job starts)"]
    return resolve_run_precision(cfg)
