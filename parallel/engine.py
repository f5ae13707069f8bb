"""The Engine the training loop talks to: one optimizer step, eval, save/load, export.

Why a wrapper around DeepSpeed's engine: the loop must not care about ZeRO stages, precision,
gradient accumulation scaling, world-size changes on resume, or RNG re-seeding. Loss semantics:
the loss a step optimizes is sum(CE over every masked token of the *global* batch) / global
masked-token count, whatever the split into ranks and micro-batches (see `train_step`).
"""
from __future__ import annotations

import hashlib
import inspect
import os
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from . import checkpoint as ckpt
from .checkpoint import CheckpointError, model_signature, peek_checkpoint
from .config import OptimConfig, ParallelConfig, PrecisionConfig, ScheduleConfig
from .ds_config import build_ds_config, check_device_dtype, validate
from .optim import build_optimizer, param_groups, uses_client_optimizer
from .schedules import build_scheduler
from .topology import Topology, all_gather_object, all_reduce_sum, barrier, init_distributed

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "labels")
IGNORE = -100
LossFn = Callable[..., tuple]


def dropout_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Deterministic per-(seed, step, micro-batch, rank) seed: resume replays the same dropout."""
    digest = hashlib.sha256(f"{seed}:{step}:{micro}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _scalar(value: Any) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item())
    return float(value)


class Engine:
    """Built by `build_engine`; see docs/parallel.md for the contract."""

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
        self.dp_world_size = topo.world_size // parallel_cfg.pipeline_stages
        # DeepSpeed's plain (ZeRO-0, fp32) path clips but does not record the norm.
        self._own_grad_norm = parallel_cfg.zero_stage == 0 and precision_cfg.dtype == "fp32"
        self._loss_takes_sentence_norm = "sentence_normalizer" in inspect.signature(loss_fn).parameters

    # ---------------------------------------------------------------- properties
    @property
    def global_step(self) -> int:
        return int(self.ds.global_steps)

    @property
    def lr(self) -> float:
        """The lr the *next* optimizer step will use."""
        return float(self.ds.optimizer.param_groups[0]["lr"])

    @property
    def module(self) -> nn.Module:
        return self.ds.module

    # ---------------------------------------------------------------- steps
    def _to_device(self, batch: dict) -> dict:
        dev = self.topo.device
        return {k: v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    def _forward_loss(self, batch: dict, mlm_norm: torch.Tensor, sent_norm: torch.Tensor):
        out = self.ds(**{k: batch[k] for k in self.model_inputs if k in batch})
        if self._loss_takes_sentence_norm:
            return self.loss_fn(out, batch, mlm_norm, sentence_normalizer=sent_norm)
        return self.loss_fn(out, batch, mlm_norm)

    def _seed(self, step: int, micro: int) -> None:
        s = dropout_seed(self.seed, step, micro, self.topo.rank)
        torch.manual_seed(s)
        if self.topo.device.type != "cpu":
            from deepspeed.accelerator import get_accelerator

            get_accelerator().manual_seed_all(s)

    def _global_counts(self, batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        counts = torch.zeros(2, dtype=torch.float64, device=self.topo.device)
        for b in batches:
            counts[0] += (b["labels"] != IGNORE).sum()
            if "sentence_label" in b:
                counts[1] += (b["sentence_label"] != IGNORE).sum()
        all_reduce_sum(counts)
        counts = counts.clamp_min(1.0).float()
        return counts[0], counts[1]

    def _module_grad_norm(self) -> float:
        """Norm of the (already rank-averaged, pre-clipping) gradients after the last backward."""
        norms = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0

    def _reduce(self, loss_sum: torch.Tensor, stats: dict[str, float]) -> dict[str, float]:
        keys = sorted(stats)
        vec = torch.tensor([_scalar(loss_sum)] + [stats[k] for k in keys], dtype=torch.float64,
                           device=self.topo.device)
        all_reduce_sum(vec)
        values = vec.tolist()
        return {"loss": values[0], **dict(zip(keys, values[1:]))}

    def train_step(self, micro_batches: list[dict]) -> dict:
        """One optimizer step over `grad_accum` micro-batches (all ranks call it).

        mlm_normalizer = masked tokens of the whole global batch (all micro-batches, all ranks);
        DeepSpeed divides by grad_accum in backward and averages gradients over data-parallel
        ranks, so we backpropagate loss * dp_world_size without its grad_accum division: the
        gradient is then exactly that of sum(CE over the global batch) / global count.
        If loss_fn accepts `sentence_normalizer`, it gets the global count of sentence labels.
        Returns loss (the global-batch loss), lr (used by this step), grad_norm, loss_scale and
        skipped (fp16), and the loss_fn stats summed over micro-batches and ranks.
        """
        if len(micro_batches) != self.grad_accum:
            raise ValueError(f"train_step got {len(micro_batches)} micro-batches, "
                             f"expected grad_accum={self.grad_accum}")
        batches = [self._to_device(b) for b in micro_batches]
        mlm_norm, sent_norm = self._global_counts(batches)
        step, lr = self.global_step, self.lr
        skipped_before = int(getattr(self.ds, "skipped_steps", 0))
        self.ds.train()
        loss_sum = torch.zeros((), dtype=torch.float64)
        grad_norm = None
        stats_sum: dict[str, float] = {}
        for micro, batch in enumerate(batches):
            self._seed(step, micro)
            loss, stats = self._forward_loss(batch, mlm_norm, sent_norm)
            self.ds.backward(loss * self.dp_world_size, scale_wrt_gas=False)
            if micro == len(batches) - 1 and self._own_grad_norm:
                grad_norm = self._module_grad_norm()
            self.ds.step()
            loss_sum += loss.detach().double().cpu()
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + _scalar(v)
        metrics = self._reduce(loss_sum, stats_sum)
        metrics["lr"] = lr
        metrics["grad_norm"] = _scalar(grad_norm if self._own_grad_norm else self.ds.get_global_grad_norm())
        if self.precision_cfg.dtype == "fp16":
            opt = self.ds.optimizer
            metrics["loss_scale"] = _scalar(getattr(opt, "cur_scale", getattr(opt, "loss_scale", None)))
            metrics["skipped"] = float(int(getattr(self.ds, "skipped_steps", 0)) - skipped_before)
        return metrics

    @torch.no_grad()
    def eval_step(self, batch: dict) -> dict:
        """Local stats (sums) of one batch, no grad; combine ranks with topology.all_reduce_sum.

        The normalizers are this batch's own counts, so the returned "loss" is a per-batch value;
        use the summed stats for metrics. Under ZeRO-3 this is collective (parameters are
        gathered): every rank must call it the same number of times.
        """
        b = self._to_device(batch)
        self.ds.eval()
        try:
            mlm = (b["labels"] != IGNORE).sum().clamp_min(1).float()
            sent = ((b["sentence_label"] != IGNORE).sum().clamp_min(1).float()
                    if "sentence_label" in b else torch.ones(()))
            loss, stats = self._forward_loss(b, mlm, sent)
        finally:
            self.ds.train()
        return {"loss": _scalar(loss), **{k: _scalar(v) for k, v in stats.items()}}

    # ---------------------------------------------------------------- checkpoints
    def _meta(self) -> dict:
        return {"world_size": self.topo.world_size, "dp_world_size": self.dp_world_size,
                "zero_stage": self.parallel_cfg.zero_stage, "dtype": self.precision_cfg.dtype,
                "pipeline_stages": self.parallel_cfg.pipeline_stages,
                "model_signature": self.signature, "global_step": self.global_step}

    def save(self, ckpt_dir: str, client_state: dict) -> None:
        """All ranks call. Writes a DeepSpeed checkpoint into exactly `ckpt_dir` (tag = basename,
        no `latest` file), then rank 0 writes parallel_meta.json last: a directory without it is
        an unfinished save. Assumes a filesystem shared by all ranks."""
        parent, tag = os.path.split(os.path.abspath(ckpt_dir))
        state = {"client_state": client_state, "parallel_meta": self._meta()}
        self.ds.save_checkpoint(parent, tag=tag, client_state=state, save_latest=False)
        barrier()
        if self.topo.rank == 0:
            ckpt.write_meta(ckpt_dir, self._meta())
        barrier()

    def load(self, ckpt_dir: str) -> dict:
        """All ranks call. Returns the client_state given to `save`.

        Same layout -> plain DeepSpeed load (bit-identical continuation with torch optimizers).
        Other world size / ZeRO stage / dtype -> universal checkpoint in <ckpt_dir>/universal
        (converted once by rank 0); that needs build_engine(resume_from=ckpt_dir).
        """
        meta = peek_checkpoint(ckpt_dir)
        ckpt.verify_files(ckpt_dir, meta)
        ckpt.check_compatible(ckpt_dir, meta, self.signature)
        universal = ckpt.resume_mode(ckpt_dir, meta, self.topo.world_size, self.parallel_cfg.zero_stage,
                                     self.precision_cfg.dtype,
                                     self.parallel_cfg.pipeline_stages) == "universal"
        if universal != self.load_universal:
            raise CheckpointError(
                f"checkpoint {ckpt_dir}: saved with world size {meta['world_size']}, ZeRO stage "
                f"{meta['zero_stage']}, {meta.get('dtype')}; build the engine with resume_from set "
                "to this directory so it is set up for this layout")
        if universal:
            prepare_universal(ckpt_dir, self.topo)
            load_dir, tag = os.path.abspath(ckpt_dir), ckpt.UNIVERSAL_DIR
        else:
            load_dir, tag = os.path.split(os.path.abspath(ckpt_dir))
        hparams = self._group_hparams()
        try:
            path, state = self.ds.load_checkpoint(load_dir, tag=tag, load_module_strict=True,
                                                  load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - torch.load / DeepSpeed failures on a bad directory
            raise ckpt.load_error(ckpt_dir, e) from e
        if path is None or state is None or "client_state" not in state:
            raise CheckpointError(f"checkpoint {ckpt_dir}: DeepSpeed found nothing to load")
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
        """Undo two side effects of DeepSpeed's ZeRO-3 universal load (0.19.8).

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

    # ---------------------------------------------------------------- export
    def consolidated_state_dict(self) -> dict:
        """Full state dict of the model on every rank (collective under ZeRO-3: all ranks call).

        Values are the module's weights as trained, upcast to fp32: exact for fp32 training; for
        bf16 training they are the bf16 weights (the fp32 master copy lives in the optimizer: use
        checkpoint.consolidate_fp32(ckpt_dir) on a saved checkpoint for those).
        """
        module = self.module
        if self.parallel_cfg.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
        return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                for k, v in module.state_dict().items()}


def prepare_universal(ckpt_dir: str, topo: Topology) -> str:
    """Rank 0 converts <ckpt_dir> to a universal checkpoint once; every rank gets the outcome."""
    error = None
    if topo.rank == 0 and not ckpt.universal_ready(ckpt_dir):
        try:
            ckpt.to_universal(ckpt_dir)
        except CheckpointError as e:
            error = str(e)
    errors = [e for e in all_gather_object(error) if e]
    barrier()
    if errors:
        raise CheckpointError(errors[0])
    return ckpt.universal_dir(ckpt_dir)


def build_engine(model: nn.Module, loss_fn: LossFn, parallel_cfg: ParallelConfig,
                 precision_cfg: PrecisionConfig, optim_cfg: OptimConfig,
                 schedule_cfg: ScheduleConfig, *, total_steps: int, micro_batch_size: int,
                 grad_accum: int, topo: Topology, seed: int = 0,
                 resume_from: Optional[str] = None,
                 model_inputs: Sequence[str] = MODEL_INPUTS,
                 dist_timeout: float = 1800.0) -> Engine:
    """Initialise torch.distributed (if needed) and DeepSpeed around `model`.

    resume_from: the checkpoint `load` will be given, if any. It is validated here (meta, files,
    model signature) and, when its layout differs from this one, converted to a universal
    checkpoint (rank 0, once) and DeepSpeed is initialised with load_universal. Call
    `engine.load(resume_from)` afterwards.
    """
    validate(parallel_cfg, precision_cfg, optim_cfg)
    if parallel_cfg.pipeline_stages > 1:
        raise ValueError(f"parallel.pipeline_stages={parallel_cfg.pipeline_stages}: "
                         "pipeline parallelism is not implemented yet (use pipeline_stages=1)")
    check_device_dtype(precision_cfg.dtype)
    init_distributed(topo, timeout=dist_timeout)
    signature = model_signature(model)
    load_universal = False
    if resume_from is not None:
        load_universal = ckpt.validate_checkpoint(resume_from, model, topo.world_size, parallel_cfg.zero_stage,
                                                  precision_cfg.dtype,
                                                  parallel_cfg.pipeline_stages) == "universal"
        if load_universal:
            prepare_universal(resume_from, topo)
    config = build_ds_config(parallel_cfg, precision_cfg, optim_cfg, schedule_cfg, micro_batch_size,
                             grad_accum, topo.world_size, load_universal=load_universal)
    import deepspeed

    def make_scheduler(optimizer):
        return build_scheduler(optimizer, schedule_cfg, total_steps)

    if uses_client_optimizer(optim_cfg):
        optimizer, params = build_optimizer(model, optim_cfg), None
    else:
        optimizer = None
        params = [{k: v for k, v in g.items() if k != "adapt"}
                  for g in param_groups(model, optim_cfg.weight_decay)]
    ds_engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=params,
                                              lr_scheduler=make_scheduler, config=config)
    return Engine(ds_engine, loss_fn, topo=topo, parallel_cfg=parallel_cfg, precision_cfg=precision_cfg,
                  grad_accum=grad_accum, seed=seed, signature=signature,
                  load_universal=load_universal, model_inputs=model_inputs)
