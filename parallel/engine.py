"""`build_engine`: the one entry point that picks the Engine implementation for a layout.

The interface and what both implementations share live in parallel/engine_base.py (re-exported
here); the implementations are parallel/ds_engine.py (data parallel, ZeRO 0-3) and
parallel/pipe_engine.py (pipeline stages x data parallel). Imports run one way:
engine -> {ds_engine, pipe_engine} -> engine_base.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from . import ds_internals
from .checkpoint import Resume
from .config import OptimConfig, ParallelConfig, PrecisionConfig, ScheduleConfig
from .ds_engine import build_deepspeed_engine
from .engine_base import MODEL_INPUTS, Engine, LossFn, layout_of
from .pipe_engine import build_pipeline_engine
from .topology import Topology

__all__ = ["build_engine", "layout_of", "Engine", "MODEL_INPUTS"]


def build_engine(model: nn.Module, loss_fn: LossFn, parallel_cfg: ParallelConfig,
                 precision_cfg: PrecisionConfig, optim_cfg: OptimConfig,
                 schedule_cfg: ScheduleConfig, *, total_steps: Optional[int], micro_batch_size: int,
                 grad_accum: int, topo: Topology, seed: int = 0,
                 resume: Optional[Resume] = None,
                 model_inputs: Sequence[str] = MODEL_INPUTS,
                 dist_timeout: float = 1800.0, compile_model: bool = False) -> Engine:
    """Initialise torch.distributed (if needed) and DeepSpeed around `model`.

    compile_model: `torch.compile` the model through DeepSpeed's `engine.compile()` (in place:
    parameter and state-dict names are unchanged, so checkpoints do not depend on it); the plain
    engine only (the pipeline engine refuses it).

    resume: the checkpoint `load` will be given (from inspect_checkpoint for this layout); in
    universal mode it is converted once (rank 0) and DeepSpeed is initialised to load it.
    `parallel_cfg.pipeline_stages > 1` builds the pipeline engine from `model.layers()`; it
    then releases the parameters of `model` that other stages hold (do not reuse `model`).
    """
    if parallel_cfg.pipeline_stages > 1:
        if compile_model:
            raise ValueError("compile is not supported with pipeline parallelism (parallel.pipeline_stages > 1): "
                             "DeepSpeed's pipeline engine runs its stage's layers one by one outside a compiled "
                             "forward")
        builder, extra = build_pipeline_engine, {}
    else:
        ds_internals.forget_pipeline_grid()
        builder, extra = build_deepspeed_engine, {"compile_model": compile_model}
    return builder(model, loss_fn, parallel_cfg, precision_cfg, optim_cfg, schedule_cfg,
                   total_steps=total_steps, micro_batch_size=micro_batch_size, grad_accum=grad_accum,
                   topo=topo, seed=seed, resume=resume, model_inputs=model_inputs,
                   dist_timeout=dist_timeout, **extra)
