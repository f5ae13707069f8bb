"""PipelineEngine: the Engine for pipeline stages x data-parallel replicas (ZeRO 0-1).

Built on DeepSpeed's pipeline engine (1F1B schedule over `grad_accum` micro-batches per step):
  - the model is `build_pipeline_module(model.layers())` (parallel/pipe_model.py): embeddings on
    the first stage, encoder layers partitioned, heads on the last, ties as DeepSpeed tied layers;
  - rank = stage * dp_size + dp_rank (DeepSpeed's PipeDataParallelTopology, as Topology says);
    every stage of a replica gets the replica's micro-batches, the first reads the inputs, the
    last the sentence labels, and the masked-LM labels travel with the activations.

How the global-batch loss is kept exact: the last stage's loss function gets the masked-token
and sentence counts of the whole global batch (one all-reduce over the step's micro-batches,
counted on the first stage only) and returns `loss * grad_accum * dp_size`; DeepSpeed divides
by grad_accum in backward and averages gradients over the replicas, so the gradient is that of
sum(CE over the global batch) / global count, whatever the number of stages and replicas.

Metrics come from the last stage (loss-function stats summed over micro-batches, one all-reduce
over the world with zeros elsewhere), so every rank returns the same numbers.

The optimizer step of a pipeline step runs in ONE place, `_optimizer_step`, which DeepSpeed's
schedule calls on every rank after the last forward pass and the tied-weight and data-parallel
gradient reductions: the step's metrics are reduced there (so the global loss is known before
the update), the gradient norm is measured (and for ZeRO-0 fp32 clipped), the UpdateGuard is told
(parallel/update_guard.py: a non-finite step is dropped on every rank), then DeepSpeed steps.
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from . import ds_internals
from .checkpoint import CheckpointError, Resume, model_signature
from .config import OptimConfig, ParallelConfig, PrecisionConfig, ScheduleConfig
from .ds_config import build_ds_config, check_device_dtype, validate
from .ds_init import initialize_deepspeed
from .engine_base import MODEL_INPUTS, Engine, LossFn, batch_normalizers, global_normalizers, prepare_universal, scalar
from .pipe_model import PipeLayout, build_pipeline_module, pipe_layout
from .topology import Topology, all_gather_object, all_reduce_sum, init_distributed


class StageLoss:
    """The loss function DeepSpeed calls on the last stage: `(outputs, labels) -> scalar`.

    Holds what the engine sets per step (the objective's global normalizers, scale) and collects
    the stats. labels = the objective's `loss_fields` from the micro-batch iterator, in that order
    (a field the batches lack travels as a 1-element placeholder and is left out of the batch).
    """

    def __init__(self, loss_fn: LossFn):
        self.loss_fn = loss_fn
        self.fields: tuple[str, ...] = tuple(getattr(loss_fn, "loss_fields", ()))
        self.present: tuple[str, ...] = self.fields
        self.training = True
        self.normalizers = None
        self.scale = 1.0
        self.losses: list[torch.Tensor] = []
        self.stats: list[dict] = []

    def start(self, training: bool, batch: dict, normalizers: torch.Tensor, scale: float = 1.0) -> None:
        """`batch`: one of the step's batches (which loss fields it has)."""
        self.present = tuple(k for k in self.fields if k in batch)
        self.training, self.normalizers, self.scale = training, normalizers, scale
        self.losses, self.stats = [], []

    def labels_of(self, batch: dict) -> tuple:
        return tuple(batch[k] if k in self.present else torch.zeros(1, dtype=torch.long) for k in self.fields)

    def __call__(self, outputs, labels):
        batch = {k: v for k, v in zip(self.fields, labels) if k in self.present}
        loss, stats = self.loss_fn(outputs, batch, self.normalizers)
        self.losses.append(loss.detach())
        self.stats.append({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in stats.items()})
        return loss * self.scale if self.training else loss


class PipelineEngine(Engine):
    """Built by `build_engine` for parallel.pipeline_stages > 1; see docs/parallel.md."""

    def __init__(self, ds_engine, loss_fn: LossFn, *, stage_loss: StageLoss, pipe_layout: PipeLayout,
                 own_clip: float, **kwargs):
        super().__init__(ds_engine, loss_fn, **kwargs)
        self.stage_loss = stage_loss
        self.pipe_layout = pipe_layout
        self.stage = self.topo.pp_rank
        self.is_first = self.stage == 0
        self.is_last = self.stage == pipe_layout.num_stages - 1
        self._own_clip = own_clip        # > 0: clip here (DeepSpeed's ZeRO-0 fp32 clip is stage-blind)
        self._own_norm = self.parallel_cfg.zero_stage == 0 and self.precision_cfg.dtype == "fp32"
        self._grad_norm: Optional[float] = None
        self._sums: dict = {}
        self._train_shape: Optional[tuple] = None
        self._step = 0
        self._micro = 0
        self._keys: Optional[list[str]] = None
        self._carry: Optional[Callable[[], Sequence[float]]] = None
        self.ds.module.before_forward = self._before_forward
        from deepspeed.runtime.pipe import schedule

        table = ds_internals.instruction_map(self.ds)
        table[schedule.OptimizerStep] = self._make_step(table[schedule.OptimizerStep])
        ds_internals.set_instruction_map(self.ds, table)

    # ---------------------------------------------------------------- the optimizer step
    def _make_step(self, deepspeed_step):
        def step(ds, lr_kwargs=None):
            self._optimizer_step(ds, deepspeed_step, lr_kwargs)
        return step

    def _optimizer_step(self, ds, deepspeed_step, lr_kwargs) -> None:
        """Every forward pass is done and the gradients are final here (tied copies and replicas
        reduced): reduce the step's metrics (the global loss), measure and for ZeRO-0 fp32 clip
        the gradient norm, tell the UpdateGuard, then let DeepSpeed step (or the guard drop it)."""
        self._sums = self._last_stage_sums(self._stat_keys())
        self._grad_norm = None
        if self._own_norm:
            self._grad_norm = float(self._stage_grad_norm())
            if self._own_clip > 0 and math.isfinite(self._grad_norm):
                coef = min(1.0, self._own_clip / (self._grad_norm + 1e-6))
                if coef < 1.0:
                    for p in self.module.parameters():
                        if p.grad is not None:
                            p.grad.mul_(coef)
        self.guard.expect(math.isfinite(self._sums["loss"]), self._grad_norm)
        deepspeed_step(ds, lr_kwargs)

    def _stage_grad_norm(self) -> torch.Tensor:
        """L2 norm over all stages of one replica (gradients are replica-averaged already); tied
        copies past the first (`ds_pipe_replicated`) are not counted twice."""
        sq = torch.zeros((), dtype=torch.float64, device=self.topo.device)
        for p in self.module.parameters():
            if p.grad is not None and not getattr(p, "ds_pipe_replicated", False):
                sq += p.grad.detach().double().pow(2).sum()
        all_reduce_sum(sq, group=self.ds.grid.get_pipe_parallel_group())
        return sq.sqrt().float()

    # ---------------------------------------------------------------- steps
    def _before_forward(self) -> None:
        self._seed(self._step, self._micro)
        self._micro += 1

    def _items(self, batches: list[dict]):
        """(first layer's inputs, loss labels) per micro-batch: the pipeline form's 5-tuple
        (input_ids, token_type_ids, attention_mask, position_ids, labels), absent keys filled in
        (position_ids 0..L-1: one example per row); position_ids and attention_mask travel with
        the activations, so every stage masks attention per example (packed rows too)."""
        for b in batches:
            ids = b["input_ids"]
            tt = b.get("token_type_ids")
            mask = b.get("attention_mask")
            pos = b.get("position_ids")
            if pos is None:
                pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids).contiguous()
            inputs = (ids, torch.zeros_like(ids) if tt is None else tt,
                      torch.ones_like(ids) if mask is None else mask, pos, b["labels"])
            yield inputs, self.stage_loss.labels_of(b)

    def _check_shape(self, batches: list[dict]) -> None:
        for b in batches:
            shape = tuple(b["input_ids"].shape)
            if self._train_shape is None:
                self._train_shape = shape
            elif shape != self._train_shape:
                raise ValueError(f"pipeline parallelism needs every training micro-batch to have one shape: got "
                                 f"{list(shape)} after {list(self._train_shape)} (data.micro_batch_size x "
                                 "data.max_seq_len)")

    def _last_stage_sums(self, keys: list[str]) -> dict[str, float]:
        """loss + stats summed over this step's micro-batches on the last stage, over the world
        (zeros elsewhere): the same numbers on every rank; the caller's carry values ride along
        (Engine.train_step)."""
        sl = self.stage_loss
        carried = [float(x) for x in self._carry()] if self._carry is not None else []
        vec = torch.zeros(1 + len(keys), dtype=torch.float64, device=self.topo.device)
        if self.is_last:
            # Summed on the device: the all-reduce below is the step's one read on the host.
            vec[0] = sum(l.double() for l in sl.losses)
            for i, k in enumerate(keys):
                vec[1 + i] = sum(s.get(k, 0.0) for s in sl.stats)
        vec = torch.cat([vec, torch.tensor(carried, dtype=torch.float64).to(self.topo.device)])
        values = all_reduce_sum(vec).tolist()
        out = {"loss": values[0], **dict(zip(keys, values[1:1 + len(keys)]))}
        if self._carry is not None:
            out["carried"] = values[1 + len(keys):]
        return out

    def train_step(self, micro_batches: list[dict], carry: Optional[Callable[[], Sequence[float]]] = None) -> dict:
        self._carry = carry
        if len(micro_batches) != self.grad_accum:
            raise ValueError(f"train_step got {len(micro_batches)} micro-batches, "
                             f"expected grad_accum={self.grad_accum}")
        self._check_shape(micro_batches)
        batches = [self._to_device(b) for b in micro_batches]
        normalizers = global_normalizers(self.loss_fn, batches, self.topo.device, count_here=self.is_first)
        step, lr = self.global_step, self.lr
        skipped_before = int(getattr(self.ds, "skipped_steps", 0))
        self._step, self._micro = step, 0
        self.stage_loss.start(True, batches[0], normalizers, scale=float(self.grad_accum * self.dp_world_size))
        self.ds.train_batch(data_iter=self._items(batches))
        metrics = dict(self._sums)  # reduced in _optimizer_step, before the update
        return self._finish_step(metrics, lr, self._grad_norm if self._own_norm else None, skipped_before)

    def _stat_keys(self) -> list[str]:
        """The loss function's stat names, learnt from the last stage once (one gather)."""
        if self._keys is None:
            mine = sorted({k for s in self.stage_loss.stats for k in s}) if self.is_last else None
            self._keys = next(k for k in all_gather_object(mine) if k is not None)
        return self._keys

    @torch.no_grad()
    def eval_step(self, batch: dict) -> dict:
        """This rank's stats of one batch (zeros off the last stage); every rank must call it the
        same number of times (DeepSpeed's eval does a world barrier). Shapes may differ from the
        training micro-batches (partial last batches): sent with their shapes, then reset."""
        b = self._to_device(batch)
        self.stage_loss.start(False, b, batch_normalizers(self.loss_fn, b, self.topo.device))
        self.ds.dynamic_shape = True
        try:
            self.ds.eval_batch(self._items([b]), compute_loss=True, reduce_output=None, bcast_loss=False,
                               num_micro_batches=1)
        finally:
            self.ds.dynamic_shape = False
            self.ds.reset_activation_shape()
            self.ds.train()
        sl = self.stage_loss
        if not self.is_last:
            return {"loss": 0.0}
        return {"loss": scalar(sl.losses[0]), **{k: scalar(v) for k, v in sl.stats[0].items()}}

    # ---------------------------------------------------------------- weights
    def _stage_state(self) -> dict:
        """This stage's layers' weights under the plain model's state_dict names (fp32, CPU)."""
        out = {}
        for local_index, fn in enumerate(self.module.forward_funcs):
            if not isinstance(fn, nn.Module):
                continue
            layout = self.pipe_layout
            prefix = layout.layer_prefixes[layout.parts[self.stage] + local_index]
            for k, v in fn.state_dict().items():
                out.setdefault(prefix + k, v.detach().float().cpu().clone() if v.is_floating_point()
                               else v.detach().cpu().clone())
        return out

    def consolidated_state_dict(self) -> dict:
        """Full plain-named state dict on every rank (gathers the stages' layers: collective)."""
        pieces = all_gather_object(self._stage_state() if self.topo.dp_rank == 0 else None)
        out: dict = {}
        for piece in pieces:
            if piece:
                for k, v in piece.items():
                    out.setdefault(k, v)
        return out

    def check_tied_copies(self) -> None:
        """Every copy of a tied weight is bit-identical (raises CheckpointError otherwise)."""
        mine = []
        for key, comm in sorted(self.module.tied_comms.items()):
            for index, attr in enumerate(comm["weight_attr"]):
                w = self.module._recursive_getattr(comm["module"], attr).detach().float().cpu().contiguous()
                mine.append(((self.topo.dp_rank, key, index), hashlib.sha256(w.numpy().tobytes()).hexdigest(),
                             self.topo.rank))
        seen: dict = {}
        for rank_list in all_gather_object(mine):
            for where, digest, rank in rank_list:
                key = where[1]
                if seen.setdefault(where, digest) != digest:
                    raise CheckpointError(f"tied weight {key} differs between pipeline stages after loading "
                                          f"(rank {rank})")

    # ---------------------------------------------------------------- checkpoints
    def _meta(self) -> dict:
        return {**super()._meta(), "pipeline": self.pipe_layout.to_meta()}

    def _universal_aliases(self) -> dict:
        return self.pipe_layout.plain_names

    def load(self, resume: Resume) -> dict:
        client = super().load(resume)
        self.check_tied_copies()
        return client


def build_pipeline_engine(model: nn.Module, loss_fn: LossFn, parallel_cfg: ParallelConfig,
                          precision_cfg: PrecisionConfig, optim_cfg: OptimConfig,
                          schedule_cfg: ScheduleConfig, *, total_steps: Optional[int], micro_batch_size: int,
                          grad_accum: int, topo: Topology, seed: int = 0,
                          resume: Optional[Resume] = None,
                          model_inputs: Sequence[str] = MODEL_INPUTS,
                          dist_timeout: float = 1800.0) -> PipelineEngine:
    """See parallel.engine.build_engine. `model` must offer `layers()`; its parameters that
    this rank's stage does not hold are released."""
    validate(parallel_cfg, precision_cfg, optim_cfg)
    check_device_dtype(precision_cfg.dtype)
    stages = parallel_cfg.pipeline_stages
    if topo.pipeline_stages != stages:
        raise ValueError(f"topology has {topo.pipeline_stages} pipeline stages, parallel.pipeline_stages={stages}")
    init_distributed(topo, timeout=dist_timeout)
    signature = model_signature(model)
    layout = pipe_layout(model, stages, parallel_cfg.pipeline_partition)
    load_universal = resume is not None and resume.mode == "universal"
    if load_universal:
        prepare_universal(resume.path, topo, aliases=layout.plain_names)
    own_norm = parallel_cfg.zero_stage == 0 and precision_cfg.dtype == "fp32"
    config = build_ds_config(parallel_cfg, precision_cfg, optim_cfg, schedule_cfg, micro_batch_size,
                             grad_accum, topo.world_size, load_universal=load_universal,
                             device_type=topo.device.type, model_numel=sum(p.numel() for p in model.parameters()))
    if own_norm:
        config["gradient_clipping"] = 0.0  # clipped in PipelineEngine._optimizer_step instead
    from deepspeed.runtime.pipe.topology import PipeDataParallelTopology

    ds_topo = PipeDataParallelTopology(num_pp=stages, num_dp=topo.dp_size)
    coord = ds_topo.get_coord(topo.rank)
    if (coord.pipe, coord.data) != (topo.pp_rank, topo.dp_rank):
        raise RuntimeError(f"rank {topo.rank}: DeepSpeed places it at stage {coord.pipe}, replica {coord.data}; "
                           f"Topology says {topo.pp_rank}, {topo.dp_rank}")
    stage_loss = StageLoss(loss_fn)
    module = build_pipeline_module(model, layout, ds_topo, stage_loss,
                                   gradient_checkpointing=bool(getattr(model, "gradient_checkpointing", False)))
    ds_engine = initialize_deepspeed(module, config, optim_cfg, schedule_cfg, total_steps)
    return PipelineEngine(ds_engine, loss_fn, stage_loss=stage_loss, pipe_layout=layout,
                          own_clip=float(optim_cfg.grad_clip) if own_norm else 0.0,
                          topo=topo, parallel_cfg=parallel_cfg, precision_cfg=precision_cfg,
                          grad_accum=grad_accum, seed=seed, signature=signature,
                          load_universal=load_universal, model_inputs=model_inputs)
