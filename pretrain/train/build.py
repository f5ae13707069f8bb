"""Small builders that map the config to objects (mosaic-bert style), plus resume wiring."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from parallel.engine import build_engine
from parallel.checkpoint import CheckpointError, validate_checkpoint
from parallel.topology import detect, init_distributed
from pretrain.data import build_eval_loader, build_train_loader, check_vocab_size
from pretrain.model import build_model
from pretrain.model.config import ModelConfig
from pretrain.model.flops import flops_per_sequence
from pretrain.objectives import pretraining_loss
from pretrain.shardformat import load_manifest
from pretrain.tracking import build_tracker
from pretrain.train import checkpoints
from pretrain.train.config import config_hash


@dataclass
class Parts:
    topo: Any
    engine: Any
    train_loader: Any
    eval_loader_factory: Callable[[], Any]
    tracker: Any
    state: Any
    log: Callable[[str], None]
    flops_for: Callable[[list, dict], float]


def make_logger(rank: int) -> Callable[[str], None]:
    def log(message: str) -> None:
        if rank == 0 or message.startswith(("warning", "error")):
            print(f"[rank {rank}] {message}", flush=True)

    return log


def model_config(cfg: DictConfig) -> ModelConfig:
    return ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True))


def build_model_from_config(cfg: DictConfig):
    mcfg = model_config(cfg)
    if mcfg.init_from:
        # config.yaml already holds the effective config (the directory's shape, the run's
        # options: launch/preflight.py); a shape that differs from the directory's is one error.
        from pretrain.hf.export import load_hf_pretrained

        return load_hf_pretrained(mcfg.init_from, mcfg)
    return build_model(mcfg), mcfg


def find_resume_point(run_dir: str, log) -> list[str]:
    return checkpoints.resume_candidates(os.path.join(run_dir, "checkpoints"), warn=log)


def build_everything(cfg: DictConfig, run_dir: str) -> Parts:
    from pretrain.train.loop import TrainState

    topo = detect()
    init_distributed(topo)
    log = make_logger(topo.rank)
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank, before any draw
    model, mcfg = build_model_from_config(cfg)
    manifest = load_manifest(cfg.data.path)
    candidates = _loadable(find_resume_point(run_dir, log), model, cfg, topo, log)
    resume_from = candidates[0] if candidates else None
    engine = build_engine(
        model,
        partial(_loss, objective=cfg.objective),
        *(OmegaConf.to_object(cfg[group]) for group in ("parallel", "precision", "optim", "schedule")),
        total_steps=cfg.schedule.total_steps or cfg.trainer.max_steps,
        micro_batch_size=cfg.data.micro_batch_size,
        grad_accum=cfg.trainer.grad_accum,
        topo=topo,
        seed=cfg.run.seed,
        resume_from=resume_from,
    )
    state = TrainState(config_hash=config_hash(cfg), seed=cfg.run.seed, world_size=topo.world_size)
    client = _load_with_fallback(engine, candidates, log)
    if client is not None:
        saved = client.get("train_state", {})
        for f in fields(state):
            if f.name in saved and f.name not in ("config_hash", "world_size"):
                setattr(state, f.name, saved[f.name])
        if saved.get("config_hash") != state.config_hash:
            log("warning: model/data/objective config differs from the checkpoint's; continuing with the new one")
        log(f"resumed from step {state.step} ({saved.get('world_size')} -> {topo.world_size} ranks)")
    elif os.path.isdir(os.path.join(run_dir, "checkpoints")) and checkpoints.step_dirs(os.path.join(run_dir, "checkpoints")):
        raise checkpoints.ResumeError(
            f"{run_dir}/checkpoints has step directories but none is usable; refusing to start over silently "
            f"(relaunch with run.fresh=true to start a new run)"
        )
    check_vocab_size(manifest, mcfg.vocab_size)
    train_loader = build_train_loader(
        cfg.data, cfg.objective, topo.rank, topo.world_size, manifest, with_ids=cfg.trainer.record_samples
    )
    if state.data_cursor:
        train_loader.load_state_dict(state.data_cursor)
    tracker = build_tracker(
        cfg.tracker, run_dir, cfg.run.name, OmegaConf.to_container(cfg, resolve=True),
        resume_state={**state.tracker, "step": state.step} if client is not None else None,
        is_main=topo.rank == 0,
    )
    per_seq = {}

    def flops_for(micro: list, metrics: dict) -> float:
        seq_len = cfg.data.max_seq_len
        key = seq_len
        if key not in per_seq:
            per_seq[key] = flops_per_sequence(mcfg, seq_len, 0)
        masked = metrics.get("mlm_count", 0)
        sequences = topo.world_size * sum(len(b["input_ids"]) for b in micro)
        head = flops_per_sequence(mcfg, seq_len, 1) - per_seq[key]
        return sequences * per_seq[key] + masked * head

    return Parts(
        topo=topo,
        engine=engine,
        train_loader=train_loader,
        eval_loader_factory=lambda: build_eval_loader(cfg.data, cfg.objective, topo.rank, topo.world_size, manifest),
        tracker=tracker,
        state=state,
        log=log,
        flops_for=flops_for,
    )


def _loss(output, batch, mlm_normalizer, objective, sentence_normalizer=None):
    return pretraining_loss(output, batch, mlm_normalizer, objective, sentence_normalizer=sentence_normalizer)


def _loadable(candidates: list[str], model, cfg: DictConfig, topo, log) -> list[str]:
    """Drop checkpoints the engine would refuse (files, shape, layout), newest first, warning for each.

    When none is left but some existed, the last refusal is raised: never start over silently.
    """
    kept, last_error = [], None
    for path in candidates:
        try:
            validate_checkpoint(path, model, topo.world_size, cfg.parallel.zero_stage, cfg.precision.dtype,
                                cfg.parallel.pipeline_stages)
            kept.append(path)
        except CheckpointError as e:
            last_error = e
            log(f"warning: not resuming from {path}: {e}")
    if candidates and not kept:
        raise last_error
    return kept


def _load_with_fallback(engine, candidates: list[str], log):
    """Load the newest checkpoint that loads; a corrupt one is skipped with a warning, never silently."""
    for i, path in enumerate(candidates):
        try:
            return engine.load(path)
        except CheckpointError as e:
            if i + 1 < len(candidates):
                log(f"warning: {e}; falling back to {candidates[i + 1]}")
            else:
                raise
    return None
