"""DeepSpeedEngine: the Engine for data parallelism with ZeRO 0-3 and offload.

How the global-batch loss is kept exact: DeepSpeed divides the loss by grad_accum in backward
and averages gradients over data-parallel ranks, so the engine passes the loss function the
masked-token count of the whole global batch and backpropagates loss * dp_world_size with
`scale_wrt_gas=False`; the gradient is then that of sum(CE over the global batch) / global count.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .checkpoint import Resume, model_signature
from .config import OptimConfig, ParallelConfig, PrecisionConfig, ScheduleConfig
from .ds_config import build_ds_config, check_device_dtype, validate
from .ds_init import initialize_deepspeed
from .engine_base import MODEL_INPUTS, Engine, LossFn, batch_normalizers, global_normalizers, prepare_universal, scalar
from .topology import Topology, all_reduce_sum, init_distributed


class DeepSpeedEngine(Engine):
    """Built by `build_engine`; see docs/parallel.md for the contract."""

    def __init__(self, ds_engine, loss_fn: LossFn, **kwargs):
        super().__init__(ds_engine, loss_fn, **kwargs)
        # DeepSpeed's plain (ZeRO-0, fp32) path clips but does not record the norm.
        self._own_grad_norm = self.parallel_cfg.zero_stage == 0 and self.precision_cfg.dtype == "fp32"

    def _forward_loss(self, batch: dict, normalizers: torch.Tensor):
        out = self.ds(**{k: batch[k] for k in self.model_inputs if k in batch})
        return self.loss_fn(out, batch, normalizers)

    def _module_grad_norm(self) -> torch.Tensor:
        """Norm of the (already rank-averaged, pre-clipping) gradients after the last backward."""
        norms = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())

    def _reduce(self, loss_sum: torch.Tensor, stats: dict, grad_norm: Optional[torch.Tensor] = None,
                carry: Optional[Callable[[], Sequence[float]]] = None) -> dict[str, float]:
        """One all-reduce of the loss and the stats (device tensors or floats): the step's one
        read of device values on the host. `grad_norm` (the same on every rank) rides along:
        summed over the ranks, then divided by their number; so do the caller's `carry` values."""
        keys = sorted(stats)
        device = loss_sum.device
        parts = [loss_sum.reshape(())] + [torch.as_tensor(stats[k], dtype=torch.float64, device=device).reshape(())
                                          for k in keys]
        if grad_norm is not None:
            parts.append(grad_norm.to(device=device, dtype=torch.float64).reshape(()))
        vec = torch.stack(parts)
        if carry is not None:   # host numbers: one small copy to the device
            vec = torch.cat([vec, torch.tensor([float(x) for x in carry()], dtype=torch.float64).to(device)])
        values = all_reduce_sum(vec).tolist()
        out = {"loss": values[0], **dict(zip(keys, values[1:1 + len(keys)]))}
        if grad_norm is not None:
            out["_grad_norm"] = values[len(parts) - 1] / self.topo.world_size
        if carry is not None:
            out["carried"] = values[len(parts):]
        return out

    def train_step(self, micro_batches: list[dict], carry: Optional[Callable[[], Sequence[float]]] = None) -> dict:
        """One optimizer step over `grad_accum` micro-batches (see the module docstring and
        Engine.train_step for `carry`).

        The objective's normalizers are summed over the micro-batches and ranks first (one
        all-reduce), so every micro-batch's loss divides by the global counts.
        The metrics are reduced over ranks before the last `ds.step()` (the one that updates), so
        the guard knows the global loss, and for ZeRO-0 fp32 the gradient norm, beforehand.
        """
        if len(micro_batches) != self.grad_accum:
            raise ValueError(f"train_step got {len(micro_batches)} micro-batches, "
                             f"expected grad_accum={self.grad_accum}")
        batches = [self._to_device(b) for b in micro_batches]
        normalizers = global_normalizers(self.loss_fn, batches, self.topo.device)
        step, lr = self.global_step, self.lr
        skipped_before = int(getattr(self.ds, "skipped_steps", 0))
        self.ds.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.topo.device)
        stats_sum: dict = {}
        for micro, batch in enumerate(batches):
            self._seed(step, micro)
            loss, stats = self._forward_loss(batch, normalizers)
            self.ds.backward(loss * self.dp_world_size, scale_wrt_gas=False)
            loss_sum += loss.detach().double()
            for k, v in stats.items():   # kept on the device until the one all-reduce
                v = v.detach().double() if isinstance(v, torch.Tensor) else float(v)
                stats_sum[k] = v if k not in stats_sum else stats_sum[k] + v
            if micro < len(batches) - 1:
                self.ds.step()  # accumulation only: no update yet
        metrics = self._reduce(loss_sum, stats_sum, self._module_grad_norm() if self._own_grad_norm else None, carry)
        own_norm = metrics.pop("_grad_norm", None)
        self.guard.expect(math.isfinite(metrics["loss"]), own_norm)
        self.ds.step()
        return self._finish_step(metrics, lr, own_norm if self._own_grad_norm else None, skipped_before)

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
            loss, stats = self._forward_loss(b, batch_normalizers(self.loss_fn, b, self.topo.device))
        finally:
            self.ds.train()
        return {"loss": scalar(loss), **{k: scalar(v) for k, v in stats.items()}}

    def consolidated_state_dict(self) -> dict:
        """Full state dict of the model on every rank (collective under ZeRO-3: all ranks call).

        Values are the module's weights as trained, upcast to fp32: exact for fp32 training; for
        bf16 training they are the bf16 weights (the fp32 master copy lives in the optimizer: use
        parallel.convert.consolidate_fp32(ckpt_dir) on a saved checkpoint for those).
        """
        module = self.module
        if self.parallel_cfg.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
        return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                for k, v in module.state_dict().items()}


def build_deepspeed_engine(model: nn.Module, loss_fn: LossFn, parallel_cfg: ParallelConfig,
                           precision_cfg: PrecisionConfig, optim_cfg: OptimConfig,
                           schedule_cfg: ScheduleConfig, *, total_steps: Optional[int], micro_batch_size: int,
                           grad_accum: int, topo: Topology, seed: int = 0,
                           resume: Optional[Resume] = None,
                           model_inputs: Sequence[str] = MODEL_INPUTS,
                           dist_timeout: float = 1800.0, compile_model: bool = False) -> DeepSpeedEngine:
    """See parallel.engine.build_engine."""
    validate(parallel_cfg, precision_cfg, optim_cfg)
    check_device_dtype(precision_cfg.dtype)
    init_distributed(topo, timeout=dist_timeout)
    signature = model_signature(model)
    load_universal = resume is not None and resume.mode == "universal"
    if load_universal:
        prepare_universal(resume.path, topo)
    config = build_ds_config(parallel_cfg, precision_cfg, optim_cfg, schedule_cfg, micro_batch_size,
                             grad_accum, topo.world_size, load_universal=load_universal,
                             device_type=topo.device.type, model_numel=sum(p.numel() for p in model.parameters()))
    ds_engine = initialize_deepspeed(model, config, optim_cfg, schedule_cfg, total_steps)
    if compile_model:
        # In place (nn.Module.compile): the first step of each new shape and mode pays the
        # compile; DeepSpeed's backward hooks (ZeRO-2/3) stay outside the compiled graph.
        ds_engine.compile()
    return DeepSpeedEngine(ds_engine, loss_fn, topo=topo, parallel_cfg=parallel_cfg,
                           precision_cfg=precision_cfg, grad_accum=grad_accum, seed=seed,
                           signature=signature, load_universal=load_universal, model_inputs=model_inputs)
