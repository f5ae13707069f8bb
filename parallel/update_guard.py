"""UpdateGuard: drop a step's optimizer update before it is applied when it is not finite.

Why around the innermost optimizer's `step` (DeepSpeed's `basic_optimizer`: our torch AdamW/LAMB,
or DeepSpeed's own Adam for optim.impl=deepspeed): DeepSpeed calls it on every rank at the same
point of `engine.step()`, after the gradients are reduced, unscaled and clipped and the global
gradient norm is known, before any weight changes, whatever wraps it (ZeRO 1-3, the bf16/fp16
optimizers, offload, the pipeline engine). One guard therefore serves every Engine.

What DeepSpeed 0.19.8 does by itself with a non-finite gradient norm (read in runtime/engine.py
`_take_model_step`, zero/stage_1_and_2.py, zero/stage3.py, bf16_optimizer.py,
fp16/unfused_optimizer.py): ZeRO-3, the bf16 optimizer, ZeRO-0 bf16/fp16 and ZeRO-1/2 fp32/fp16
skip the step ("overflow": `skipped_steps` + 1, the LR scheduler does not step); ZeRO-1/2 bf16
and ZeRO-0 fp32 apply it (NaN weights). A non-finite *loss* with finite gradients is never caught.

The guard's verdict for a step is, in order: the engine said the loss was not finite -> drop; a
global gradient norm is known (the engine's own, or the one the DeepSpeed wrapper just computed;
both already reduced over ranks) -> drop iff it is not finite; neither -> each rank checks the
gradients it holds and one all-reduce decides. Every input is the same on every rank, so every
rank drops or applies alike. A dropped update is reported to DeepSpeed as an overflow, exactly
like its own skips: the engine's global step advances, `skipped_steps` + 1, the LR schedule does
not advance (it counts applied updates, as for fp16 overflow).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import ds_internals
from .topology import all_reduce_max

_CHUNK = 1 << 24  # elements per isfinite() call: bounded temporary memory on large flat partitions


def all_finite(tensors) -> bool:
    """This rank only: every floating-point element of `tensors` is finite."""
    flags: dict[torch.device, list[torch.Tensor]] = {}  # one host sync per device, not per tensor
    for t in tensors:
        if t is None or not t.is_floating_point() or t.numel() == 0:
            continue
        flat = t.detach().reshape(-1)
        for start in range(0, flat.numel(), _CHUNK):
            flags.setdefault(flat.device, []).append(torch.isfinite(flat[start:start + _CHUNK]).all())
    return all(bool(torch.stack(f).all()) for f in flags.values())


def everywhere(local_ok: bool) -> bool:
    """Collective: True when `local_ok` holds on every rank."""
    bad = all_reduce_max(torch.tensor([0.0 if local_ok else 1.0]))  # placed on the backend's device there
    return float(bad[0]) == 0.0


def _finite(value) -> Optional[bool]:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = float(value.detach().float().reshape(-1)[0]) if value.numel() else 0.0
    return math.isfinite(float(value))


class UpdateGuard:
    """Installed once per DeepSpeed engine; `expect` before each optimizer step, `reset` after a load."""

    def __init__(self, ds_engine):
        self.ds = ds_engine
        self.inner = ds_engine.basic_optimizer
        self._inner_step = self.inner.step
        self.inner.step = self._guarded_step  # instance attribute: DeepSpeed's wrappers call it
        self._expected: dict[int, tuple[bool, Optional[float]]] = {}
        self._verdicts: dict[int, bool] = {}

    def expect(self, loss_finite: bool, grad_norm: Optional[float] = None) -> None:
        """What the engine knows about the step about to be taken (values every rank shares):
        whether the global loss is finite, and the global gradient norm if it computed one."""
        self._expected = {self.ds.global_steps: (loss_finite, grad_norm)}

    def reset(self) -> None:
        """Forget verdicts: after a checkpoint load the engine's step counter goes back."""
        self._expected, self._verdicts = {}, {}

    # ------------------------------------------------------------------ inside DeepSpeed's step
    def _guarded_step(self, *args, **kwargs):
        step = self.ds.global_steps
        if step not in self._verdicts:  # first call of this step (ZeRO calls once per group)
            self._verdicts = {step: self._drop(step)}
        drop = self._verdicts[step]
        self._report_overflow(drop)
        if drop:
            return None
        return self._inner_step(*args, **kwargs)

    def _drop(self, step: int) -> bool:
        loss_finite, norm = self._expected.get(step, (True, None))
        if not loss_finite:
            return True
        if norm is None:
            wrapper = self.ds.optimizer
            # Set by every DeepSpeed wrapper right before it calls the inner step (fresh).
            norm = ds_internals.wrapper_grad_norm(wrapper) if wrapper is not self.inner else None
        finite = _finite(norm)
        if finite is not None:
            return not finite
        grads = [p.grad for group in self.inner.param_groups for p in group["params"]]
        return not everywhere(all_finite(grads))

    def _report_overflow(self, drop: bool) -> None:
        """DeepSpeed reads `optimizer.overflow` after the step: skipped_steps + 1, no LR step."""
        wrapper = self.ds.optimizer
        if wrapper is self.inner:
            wrapper.overflow = drop
        elif drop:
            wrapper.overflow = True
