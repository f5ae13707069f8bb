"""Small builders that map the config to objects (mosaic-bert style), plus resume wiring."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from parallel.checkpoint import model_signature
from parallel.ds_config import accumulates_in_fp32
from parallel.engine import build_engine, layout_of
from parallel.topology import detect, init_distributed
from pretrain.data import build_eval_loader, build_train_loader, check_vocab_size
from pretrain.data.build import load_source_manifests
from pretrain.data.sources import is_mixture
from pretrain.model import apply_runtime_settings, build_model
from pretrain.model.config import ModelConfig
from pretrain.model.flops import batch_flops
from pretrain.model.pretraining import MODEL_INPUTS
from pretrain.objectives import build_objective
from pretrain.tracking import build_tracker
from pretrain.train.budget import schedule_steps
from pretrain.train.checkpoint_manager import CheckpointManager
from pretrain.train.config import config_hash
from pretrain.train.phases import Phases
from pretrain.train.stacking import Stacking, StackingPlan
from pretrain.train.state import TrainState


@dataclass
class Parts:
    topo: Any
    engine: Any
    train_loader: Any
    eval_loader_factory: Any      # () -> loader, or {source name: () -> loader} for a mixture
    tracker: Any
    state: TrainState
    checkpoints: CheckpointManager
    log: Callable[[str], None]
    flops_for: Callable[[list, dict], float]
    objective: Any = None    # pretrain.objectives.Objective: what the loop, evaluation and tracker report
    stacking: Any = None     # pretrain.train.stacking.Stacking, or None
    phases: Any = None       # pretrain.train.phases.Phases, or None (trainer.phases empty)
    make_train_loader: Optional[Callable] = None   # (data cfg, objective cfg) -> a train loader of this rank
    model_now: Optional[dict] = None   # {"cfg": ModelConfig}: the model settings the current phase runs with
    branched: Optional[str] = None     # the checkpoint this launch branched from (run.branch_from), if it did
    schedule_span: Optional[int] = None   # steps the lr schedule spans; None = placed by the budget used


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


def build_everything(cfg: DictConfig, run_dir: str) -> Parts:
    topo = detect(backend=cfg.parallel.backend, pipeline_stages=cfg.parallel.pipeline_stages)
    init_distributed(topo)
    log = make_logger(topo.rank)
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank, before any draw
    model, mcfg = build_model_from_config(cfg)
    objective = build_objective(cfg.objective, mcfg)
    model.attach_objective(objective)   # its own modules (if any): before the signature and the engine
    if len(model.objective_modules) and not objective.has_own_forward():
        raise ValueError(f"objective.name={objective.name}: its own modules need its own forward to be used")
    model.set_packed_rows(cfg.data.packing)   # the pipeline form's layers cannot see the batch's layout
    manifests = load_source_manifests(cfg.data)   # name -> Manifest; one tokenizer for all
    manifest = next(iter(manifests.values()))
    manager = CheckpointManager(run_dir, cfg.trainer.keep_checkpoints, log)
    parallel_cfg, precision_cfg, optim_cfg, schedule_cfg = (
        OmegaConf.to_object(cfg[group]) for group in ("parallel", "precision", "optim", "schedule"))
    # Checked once, on the unwrapped model (ZeRO-3 partitions parameters inside build_engine).
    plans = manager.plan_resume(model_signature(model), layout_of(topo, parallel_cfg, precision_cfg))
    if not plans and not cfg.run.branch_from:
        said = objective.initialize(model)   # a fresh run: e.g. a distilled student from its teacher's layers
        if said:
            log(said)
    branched = None
    if not plans and cfg.run.branch_from:   # a branch's first launch: another run's checkpoint, as a resume
        plans, branched = [branch_plan(cfg.run.branch_from, model, layout_of(topo, parallel_cfg, precision_cfg))], \
            cfg.run.branch_from
    schedule_span = schedule_steps(cfg.schedule.total_steps, cfg.trainer.max_steps, cfg.trainer.max_tokens,
                                   cfg.trainer.max_time)
    if topo.rank == 0:   # what pretrain-compare and pretrain-status show of this run
        import json
        import os

        from pretrain.tracking.reader import OBJECTIVE_FILE

        with open(os.path.join(run_dir, OBJECTIVE_FILE), "w") as f:
            json.dump(objective.describe(), f, indent=1)
    engine = build_engine(
        model,
        objective,
        parallel_cfg, precision_cfg, optim_cfg, schedule_cfg,
        total_steps=schedule_span,
        micro_batch_size=cfg.data.micro_batch_size,
        grad_accum=cfg.trainer.grad_accum,
        topo=topo,
        seed=cfg.run.seed,
        resume=plans[0] if plans else None,
        model_inputs=MODEL_INPUTS,
        compile_model=cfg.trainer.compile,
    )
    if cfg.trainer.grad_accum > 1 and not accumulates_in_fp32(parallel_cfg, precision_cfg):
        log(f"warning: the {cfg.trainer.grad_accum} micro-batch gradients of a step are summed in "
            f"{precision_cfg.dtype} at parallel.zero_stage={parallel_cfg.zero_stage} (DeepSpeed 0.19 sums in fp32 "
            "only under ZeRO-2/3); parallel=zero2 sums them in fp32 (without pipeline stages)")
    from pretrain.model.attention import backend_choice

    backend, why = backend_choice(mcfg.attention_backend, mcfg.unpad, topo.device)
    log(f"attention: {backend} ({why})")
    if cfg.trainer.compile:
        log("compile: torch.compile of the model under DeepSpeed; the first step of each new batch shape "
            "compiles (tens of seconds)")
    state = TrainState(config_hash=config_hash(cfg), seed=cfg.run.seed, world_size=topo.world_size)
    client = manager.load(engine, plans)
    if client is not None:
        saved = client.get("train_state", {})
        state.restore(saved)
        if branched is not None:
            state.tracker = {}   # a new run in the dashboards; its steps continue the branch's numbering
            log(f"branched from {branched} at step {state.step}: its weights, optimizer state, lr schedule "
                f"({cfg.run.branch_schedule}) and data cursor ({saved.get('world_size')} -> {topo.world_size} ranks)")
        else:
            if saved.get("config_hash") != state.config_hash:
                log("warning: model/data/objective config differs from the checkpoint's; continuing with the new one")
            log(f"resumed from step {state.step} ({saved.get('world_size')} -> {topo.world_size} ranks)")
    check_vocab_size(manifest, mcfg.vocab_size)
    # Only data-parallel replicas read different data: the stages of one pipeline replica read
    # the same batches (the first stage needs the inputs, the last the labels).
    pin = topo.device.type == "cuda"   # page-locked host batches: asynchronous copies to the GPU

    def make_train_loader(data_cfg, objective_cfg):
        return build_train_loader(
            data_cfg, objective_cfg, topo.dp_rank, topo.dp_size, manifests, with_ids=cfg.trainer.record_samples,
            pin_memory=pin, on_epoch=lambda name, epoch: log(f"data: source {name} starts epoch {epoch} "
                                                             "(its data is read again)"),
        )

    phases = Phases(cfg) if cfg.trainer.phases else None
    running = phases.config(state.phase) if phases is not None else cfg   # the settings of the current phase
    model_now = {"cfg": mcfg}   # the model settings of the current phase (FLOPs count its window)
    if phases is not None:
        log(f"{phases.describe(state.phase)}" + (" (resumed)" if state.step else ""))
        model_now["cfg"] = phases.model_config(state.phase, mcfg)
        apply_runtime_settings(engine.module, model_now["cfg"])
    train_loader = make_train_loader(running.data, running.objective)
    if train_loader.source_names is not None:
        weights = ", ".join(f"{n} {w:.3f}" for n, w in zip(train_loader.source_names, train_loader.spec.weights))
        log(f"data: mixture of {len(weights.split(', '))} sources, weights {weights}")
    log(f"data: {train_loader.num_workers} loader worker(s) per rank"
        + (" (data.num_workers=null: from the CPUs per rank)" if cfg.data.num_workers is None else ""))
    if state.data_cursor:
        train_loader.load_state_dict(state.data_cursor)
    tracker = build_tracker(
        cfg.tracker, run_dir, cfg.run.name, OmegaConf.to_container(cfg, resolve=True),
        # a branch: a new dashboard run whose lines after the branch step (an earlier attempt's) are dropped
        resume_state={**state.tracker, "step": state.step} if client is not None else None,
        is_main=topo.rank == 0,
    )
    stacking_plan = StackingPlan.from_config(cfg.trainer.stacking)
    stacking = Stacking(stacking_plan, engine, log) if stacking_plan else None
    if stacking is not None:
        stacking.start(state.step)

    def flops_for(micro: list, metrics: dict) -> float:
        """Model FLOPs of one step over the global batch (all data-parallel replicas): this
        rank's micro-batches (real tokens, attention within each example) x the replicas, at
        the depth the step ran (progressive stacking)."""
        run_cfg = model_now["cfg"] if stacking is None else replace(model_now["cfg"], num_layers=stacking.depth())
        return topo.dp_size * sum(batch_flops(run_cfg, b, objective.forward_flops) for b in micro)

    return Parts(
        topo=topo,
        engine=engine,
        train_loader=train_loader,
        eval_loader_factory=eval_loader_factories(cfg, topo, manifests, pin),
        tracker=tracker,
        state=state,
        checkpoints=manager,
        log=log,
        flops_for=flops_for,
        objective=objective,
        stacking=stacking,
        schedule_span=schedule_span,
        phases=phases,
        make_train_loader=make_train_loader,
        model_now=model_now,
        branched=branched,
    )



def branch_plan(path: str, model, layout):
    """How to load run.branch_from (checked like any resume: files, model shape, layout)."""
    from parallel.checkpoint import CheckpointError, inspect_checkpoint
    from pretrain.train.checkpoint_manager import ResumeError

    try:
        return inspect_checkpoint(path, model_signature(model), layout)
    except CheckpointError as e:
        raise ResumeError(f"run.branch_from={path}: {e}") from None


def eval_loader_factories(cfg: DictConfig, topo, manifests: dict, pin: bool):
    """One factory (data.path) or {source: factory} (a mixture: evaluated per source and overall)."""
    def factory(source):
        return lambda: build_eval_loader(cfg.data, cfg.objective, topo.dp_rank, topo.dp_size, manifests,
                                         pin_memory=pin, source=source)

    if not is_mixture(cfg.data):
        return factory(None)
    return {name: factory(name) for name in manifests}
