"""The Engine interface the training loop talks to, and what both implementations share.

`parallel.engine.build_engine` picks the implementation (parallel/engine.py); this module
imports neither, so the implementations import it without a cycle.

Why an interface: the loop must not care about ZeRO stages, pipeline stages, precision,
gradient-accumulation scaling, world-size changes on resume or RNG re-seeding. Two
implementations sit behind it, both on DeepSpeed:
  DeepSpeedEngine  (parallel/ds_engine.py)    data parallel, ZeRO 0-3, offload
  PipelineEngine   (parallel/pipe_engine.py)  pipeline stages x data parallel, ZeRO 0-1
Loss semantics are the same for both: the engine trains an *objective* (the `loss_fn` argument;
pretrain/objectives/base.py), an object with
  counts(batch) -> [K] float64   this micro-batch's share of the K global normalizers
  loss_fields                    batch fields its loss reads besides the model output
  __call__(output, batch, normalizers [K]) -> (loss, {stat: 0-dim sum})
The engine sums `counts` over the step's micro-batches and every rank (one all-reduce before the
forwards) and hands the totals (>= 1) to every micro-batch's loss, so a loss like sum(CE over
every masked token of the *global* batch) / global masked-token count is exact whatever the split
into ranks, stages and micro-batches. The engines know no objective's names.

Checkpoints: `save` writes DeepSpeed's files plus `parallel_meta.json` (written last, lists every
file with its size); `load` takes a `Resume` that `parallel.checkpoint.inspect_checkpoint` already
validated (the trainer's CheckpointManager decides what to resume from; nothing here re-checks).
`load` also works on a running engine (the trainer's rewind); files are read weights-only.

Non-finite steps: every engine installs an `UpdateGuard` (parallel/update_guard.py) on its
innermost optimizer, so an update whose loss or gradient norm is not finite is dropped on every
rank before it is applied; `state_is_finite` checks weights and optimizer state before a save.
"""
from __future__ import annotations

import hashlib
import math
import os
from abc import ABC, abstractmethod
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from . import checkpoint as ckpt
from . import ds_internals
from .checkpoint import CheckpointError, Layout, Resume
from .convert import to_universal
from .pipe_checkpoint import add_aliases
from .config import ParallelConfig, PrecisionConfig
from .topology import Topology, all_gather_object, all_reduce_sum, barrier
from .schedules import apply_progress, start_segment
from .update_guard import UpdateGuard, all_finite, everywhere

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "labels", "position_ids")
LossFn = Callable[..., tuple]   # an objective: callable, with counts() and loss_fields (above)


def dropout_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Deterministic per-(seed, step, micro-batch, rank) seed: resume replays the same dropout."""
    digest = hashlib.sha256(f"{seed}:{step}:{micro}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def global_normalizers(objective, batches: list[dict], device: torch.device, count_here: bool = True) -> torch.Tensor:
    """The objective's normalizer counts for the whole step, summed over every rank, at least 1.
    `count_here=False`: this rank's batches are counted by another rank (later pipeline stages see
    their replica's batches too), it only joins the all-reduce."""
    counts = torch.zeros(len(objective.normalizers), dtype=torch.float64, device=device)
    if count_here:
        for b in batches:
            counts += objective.counts(b).to(device=device, dtype=torch.float64)
    all_reduce_sum(counts)
    return counts.clamp_min(1.0).float()


def batch_normalizers(objective, batch: dict, device: torch.device) -> torch.Tensor:
    """One batch's own counts (evaluation: a per-batch loss; the summed stats are what count)."""
    return objective.counts(batch).to(device=device, dtype=torch.float64).clamp_min(1.0).float()


def scalar(value: Any) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item())
    return float(value)


def layout_of(topo: Topology, parallel_cfg: ParallelConfig, precision_cfg: PrecisionConfig) -> Layout:
    return Layout(topo.world_size, parallel_cfg.zero_stage, precision_cfg.dtype, parallel_cfg.pipeline_stages,
                  parallel_cfg.pipeline_partition)


class Engine(ABC):
    """What the loop uses. Every method is called by all ranks (they are collective).

    train_step(micro_batches) -> metrics: one optimizer step over `grad_accum` micro-batches;
        metrics = loss (global-batch loss), lr (used by this step), grad_norm, loss_scale (fp16),
        skipped (1.0 when no update was applied: fp16 overflow, or a non-finite step dropped by
        the guard), nonfinite (1.0 when the loss, or outside fp16 the gradient norm, was not
        finite), and the loss_fn stats summed over micro-batches and data-parallel ranks. Every
        value is global: the same on every rank.
    state_is_finite() -> bool: weights and optimizer state are finite on every rank (collective).
    eval_step(batch) -> stats: this rank's summed stats of one batch, no grad (combine ranks with
        topology.all_reduce_sum; ranks that hold no part of the output return zeros).
    save(dir, client_state) / load(resume) -> client_state.
    consolidated_state_dict() -> the full model state dict (names of the plain model) on every rank.
    """

    def __init__(self, ds_engine, loss_fn: LossFn, *, topo: Topology, parallel_cfg: ParallelConfig,
                 precision_cfg: PrecisionConfig, grad_accum: int, seed: int, signature: str,
                 load_universal: bool, model_inputs: Sequence[str]):
        self.ds = ds_engine
        self.loss_fn = loss_fn
        self.topo = topo
        self.parallel_cfg = parallel_cfg
        self.precision_cfg = precision_cfg
        self.grad_accum = grad_accum
        self.seed = seed
        self.signature = signature
        self.load_universal = load_universal
        self.model_inputs = tuple(model_inputs)
        self.dp_world_size = topo.dp_size
        self.layout = layout_of(topo, parallel_cfg, precision_cfg)
        self.guard = UpdateGuard(ds_engine)

    # ---------------------------------------------------------------- interface
    @abstractmethod
    def train_step(self, micro_batches: list[dict], carry: Optional[Callable[[], Sequence[float]]] = None) -> dict:
        """One optimizer step over `grad_accum` micro-batches; the metrics, reduced over ranks.

        carry: the caller's own per-rank numbers (the same count on every rank), read right
        before the step's one all-reduce and summed over all ranks in it: returned as
        metrics["carried"], so a caller needs no collective of its own per step."""

    @abstractmethod
    def eval_step(self, batch: dict) -> dict: ...

    @abstractmethod
    def consolidated_state_dict(self) -> dict: ...

    @property
    def global_step(self) -> int:
        return int(self.ds.global_steps)

    def set_schedule_progress(self, fraction: float) -> None:
        """The fraction of the run's budget used so far (the trainer's Budget, the same on every
        rank): a schedule placed by budget sets the next step's lr from it; one placed by steps
        ignores it."""
        apply_progress(self.ds.lr_scheduler, fraction)

    def start_schedule_segment(self, cfg, total_steps: Optional[int], scale: float = 1.0) -> None:
        """From the next step on, the lr follows `cfg` (a ScheduleConfig) over `total_steps` (None:
        by the progress fraction given to set_schedule_progress), peaking at scale x optim.lr."""
        start_segment(self.ds.lr_scheduler, cfg, total_steps, scale)

    @property
    def lr(self) -> float:
        """The lr the *next* optimizer step will use."""
        return float(self.ds.optimizer.param_groups[0]["lr"])

    @property
    def module(self) -> nn.Module:
        return self.ds.module

    def state_is_finite(self) -> bool:
        """Collective: every weight (the module's, ZeRO-3 partitions included), master weight and
        optimizer state tensor held by any rank is finite. One pass over them, one all-reduce."""
        inner = self.guard.inner
        tensors = [getattr(p, "ds_tensor", p) for p in self.module.parameters()]
        tensors += [p for group in inner.param_groups for p in group["params"]]
        # ZeRO-3 hands its fp32 partitions to the optimizer only inside step(): they are the
        # keys of the optimizer's state.
        tensors += [p for p in inner.state if isinstance(p, torch.Tensor)]
        tensors += [v for state in inner.state.values() if isinstance(state, dict)
                    for v in state.values() if isinstance(v, torch.Tensor)]
        return everywhere(all_finite(tensors))

    def copy_parameters(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Collective: for each (destination, source) parameter name of the module, destination
        <- source in the module, in the optimizer's fp32 master copy and in the optimizer state
        (moments and step count: the destination continues as the source would), identically
        in every layout of ZeRO 0-2 x fp32/bf16/fp16. For progressive stacking; ZeRO-3 keeps no
        whole parameters (refused at config time)."""
        from deepspeed.utils import (safe_get_full_fp32_param, safe_get_full_optimizer_state,
                                     safe_set_full_fp32_param, safe_set_full_optimizer_state)

        if self.parallel_cfg.zero_stage == 3:
            raise ValueError("copy_parameters: not under ZeRO-3")
        params = dict(self.module.named_parameters())
        inner, wrapper = self.guard.inner, self.ds.optimizer
        kind = ds_internals.masters_kind(self.ds)
        if kind == "fragments":
            ds_internals.link_fragment_states(wrapper)
            keys = self._moment_keys()
        with torch.no_grad():
            for dst, src in pairs:
                p, q = params[dst], params[src]
                p.data.copy_(q.data)
                if kind == "fragments":      # flat fp32 partitions; the step count is per group
                    safe_set_full_fp32_param(p, safe_get_full_fp32_param(q))   # collective
                    for key in keys:
                        safe_set_full_optimizer_state(p, safe_get_full_optimizer_state(q, key), key)
                    continue
                if kind == "unfused":        # one fp32 master per parameter (ZeRO-0 bf16)
                    p_master = ds_internals.unfused_master(wrapper, p)
                    q_master = ds_internals.unfused_master(wrapper, q)
                    p_master.copy_(q_master)
                else:
                    p_master, q_master = p, q
                inner.state.pop(p_master, None)
                if q_master in inner.state:
                    inner.state[p_master] = {k: v.clone() if isinstance(v, torch.Tensor) else v
                                             for k, v in inner.state[q_master].items()}

    def _moment_keys(self) -> list[str]:
        """The per-element optimizer-state keys (exp_avg, ...), the same list on every rank."""
        for state in self.guard.inner.state.values():
            return sorted(k for k, v in state.items() if isinstance(v, torch.Tensor) and v.dim() > 0)
        return []

    def _universal_aliases(self) -> Optional[dict]:
        """Module parameter name -> plain name, where they differ (the pipeline module)."""
        return None

    # ---------------------------------------------------------------- shared helpers
    def _finish_step(self, metrics: dict, lr: float, own_norm: Optional[float], skipped_before: int) -> dict:
        """After DeepSpeed's step: the lr the step used, the gradient norm (the engine's own where
        DeepSpeed keeps none, else DeepSpeed's), the skip/non-finite report, fp16's loss scale."""
        metrics["lr"] = lr
        grad_norm = own_norm if own_norm is not None else scalar(self.ds.get_global_grad_norm())
        metrics.update(self._step_report(metrics["loss"], grad_norm,
                                         int(getattr(self.ds, "skipped_steps", 0)) - skipped_before))
        if self.precision_cfg.dtype == "fp16":
            opt = self.ds.optimizer
            metrics["loss_scale"] = scalar(getattr(opt, "cur_scale", getattr(opt, "loss_scale", None)))
        return metrics

    def _step_report(self, loss: float, grad_norm: float, skipped: int) -> dict:
        """`nonfinite`, `skipped` and a truthful `grad_norm` for a step's metrics.

        Outside fp16 DeepSpeed only skips an update for a non-finite gradient norm, and then may
        leave last step's norm in place (ZeRO-3): such a step reports grad_norm = inf. Under fp16
        an overflow skip is loss scaling at work, not a non-finite step."""
        fp16 = self.precision_cfg.dtype == "fp16"
        if skipped and not fp16 and math.isfinite(grad_norm):
            grad_norm = math.inf
        bad = not math.isfinite(loss) or (not fp16 and not math.isfinite(grad_norm))
        return {"grad_norm": grad_norm, "skipped": float(skipped), "nonfinite": float(bad)}

    def _to_device(self, batch: dict) -> dict:
        dev = self.topo.device
        return {k: v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    def _seed(self, step: int, micro: int) -> None:
        s = dropout_seed(self.seed, step, micro, self.topo.rank)
        torch.manual_seed(s)
        if self.topo.device.type != "cpu":
            from deepspeed.accelerator import get_accelerator

            get_accelerator().manual_seed_all(s)

    # ---------------------------------------------------------------- checkpoints
    def _meta(self) -> dict:
        return {"world_size": self.topo.world_size, "dp_world_size": self.dp_world_size,
                "zero_stage": self.parallel_cfg.zero_stage, "dtype": self.precision_cfg.dtype,
                "pipeline_stages": self.parallel_cfg.pipeline_stages,
                "model_signature": self.signature, "global_step": self.global_step}

    def save(self, ckpt_dir: str, client_state: dict, meta: Optional[dict] = None) -> None:
        """Writes a DeepSpeed checkpoint into exactly `ckpt_dir` (tag = basename, no `latest`
        file), then rank 0 writes parallel_meta.json last (with `meta` added): a directory
        without it is an unfinished save. Assumes a filesystem shared by all ranks."""
        parent, tag = os.path.split(os.path.abspath(ckpt_dir))
        state = {"client_state": client_state, "parallel_meta": self._meta()}
        self.ds.save_checkpoint(parent, tag=tag, client_state=state, save_latest=False)
        barrier()
        if self.topo.rank == 0:
            ckpt.write_meta(ckpt_dir, {**self._meta(), **(meta or {})})
        barrier()

    def load(self, resume: Resume) -> dict:
        """Returns the client_state given to `save`. `resume` comes from inspect_checkpoint for
        this engine's layout, and the engine must have been built for its mode (universal loading
        is an initialize-time setting). An engine built for universal loading (resumed at another
        world size) loads a plain checkpoint of its own layout through a universal conversion
        too: that is what a rewind to a checkpoint it saved itself needs."""
        if resume.mode == "plain" and self.load_universal:
            prepare_universal(resume.path, self.topo, self._universal_aliases())  # rank 0 converts once
            resume = Resume(resume.path, "universal", resume.meta)
        universal = resume.mode == "universal"
        if universal != self.load_universal:
            raise CheckpointError(
                f"checkpoint {resume.path}: needs {resume.mode} loading; build the engine with "
                "resume= this checkpoint so it is set up for it")
        if universal:
            load_dir, tag = os.path.abspath(resume.path), ckpt.UNIVERSAL_DIR
        else:
            load_dir, tag = os.path.split(os.path.abspath(resume.path))
        hparams = self._group_hparams()
        try:
            with ckpt.weights_only_loads():
                path, state = self.ds.load_checkpoint(load_dir, tag=tag, load_module_strict=True,
                                                      load_optimizer_states=True,
                                                      load_lr_scheduler_states=True)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - torch.load / DeepSpeed failures on a bad directory
            raise ckpt.load_error(resume.path, e) from e
        self.guard.reset()
        if path is None or state is None or "client_state" not in state:
            raise CheckpointError(f"checkpoint {resume.path}: DeepSpeed found nothing to load")
        if universal:
            self._restore_group_hparams(hparams)
        return state["client_state"]

    def _inner_groups(self) -> list[dict]:
        opt = self.ds.optimizer
        return getattr(opt, "optimizer", opt).param_groups

    def _group_hparams(self) -> list[dict]:
        return [{k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
                for g in self._inner_groups()]

    def _restore_group_hparams(self, hparams: list[dict]) -> None:
        """Undo two side effects of DeepSpeed's universal load (0.19.8).

        It copies group 0's hyperparameters onto every group, which would put weight decay on
        biases/LayerNorm: put the configured values back."""
        groups = self._inner_groups()
        if len(groups) == len(hparams):
            for group, saved in zip(groups, hparams):
                group.update(saved)
        # It also hands one shared `step` tensor to every group's state; torch's Adam increments
        # it in place per group, so with two groups the bias correction would run twice as fast.
        opt = self.ds.optimizer
        seen: set[int] = set()
        for state in getattr(opt, "optimizer", opt).state.values():
            step = state.get("step") if isinstance(state, dict) else None
            if isinstance(step, torch.Tensor):
                if id(step) in seen:
                    state["step"] = step.clone()
                seen.add(id(state["step"]))


def prepare_universal(ckpt_dir: str, topo: Topology, aliases: Optional[dict] = None) -> str:
    """Rank 0 converts <ckpt_dir> to a universal checkpoint once; every rank gets the outcome.

    aliases: {live module parameter name: plain name} for a module whose names differ from the
    plain model's (the pipeline module); rank 0 links them into the universal directory."""
    error = None
    if topo.rank == 0:
        try:
            if not ckpt.universal_ready(ckpt_dir):
                to_universal(ckpt_dir)
            if aliases:
                add_aliases(ckpt.universal_dir(ckpt_dir), aliases)
        except (CheckpointError, OSError) as e:
            error = str(e)
    errors = [e for e in all_gather_object(error) if e]
    barrier()
    if errors:
        raise CheckpointError(errors[0])
    return ckpt.universal_dir(ckpt_dir)
