"""Optimizers: weight-decay parameter groups, AdamW (torch) and LAMB (torch implementation).

Why torch implementations by default: on CPU they give bit-identical resume (DeepSpeed's fused /
CPU Adam recompute beta^t on reload and drift ~1e-6), and DeepSpeed's FusedLamb is CUDA-only.
`impl: deepspeed` for AdamW is handled in ds_config (the optimizer goes into the DeepSpeed config).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from torch.optim import Optimizer

from .config import OptimConfig

OPTIMIZERS = ("adamw", "lamb")
IMPLS = ("torch", "deepspeed")
_NO_DECAY_NAMES = ("bias", "layernorm", "layer_norm", "norm.")


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and LayerNorm weights (1-D tensors, or names saying so) get no weight decay."""
    lowered = name.lower()
    return param.ndim < 2 or any(token in lowered for token in _NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed matrices, and biases/LayerNorm without decay and without LAMB adaptation."""
    decay, plain = [], []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        (plain if no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "adapt": True},
              {"params": plain, "weight_decay": 0.0, "adapt": False}]
    return [g for g in groups if g["params"]]


class Lamb(Optimizer):
    """LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning"), with bias correction.

    Per parameter: m, v as in Adam; u = m_hat / (sqrt(v_hat) + eps) + wd * p;
    trust = ||p|| / ||u|| (1 if either norm is 0), clamped to [0, max_trust]; p -= lr * trust * u.
    Groups with adapt=False (biases, LayerNorm: like NVIDIA's implementation) use trust = 1.

    Tensor ops only: the step count is a CPU tensor (like torch.optim.Adam's), the trust ratio a
    torch.where on the device, so a GPU step never waits for the host (no .item() per tensor).
    Scalars are formed in float64 exactly as the earlier Python-float version did, so results are
    bit-identical to it on CPU (tests/parallel/test_optim.py keeps that version as the reference).
    DeepSpeed's FusedLamb is not used: it clamps the trust ratio to [0.01, 10] and adapts every
    tensor, which is not these semantics.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, max_trust: float = 10.0, adapt: bool = True):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"Lamb: invalid lr={lr} / eps={eps} / weight_decay={weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        max_trust=max_trust, adapt=adapt)
        super().__init__(params, defaults)

    def use_tensor_segments(self, resolve: Callable[[], tuple[dict, int]],
                            reduce_sum: Callable[[torch.Tensor], None]) -> None:
        """Per-tensor trust ratios on flat partitions (DeepSpeed ZeRO-1/2 and its bf16 optimizer
        hand this optimizer one flat fp32 slice of all the tensors of a group per rank).

        resolve() -> ({storage pointer of a flat partition: [(tensor index, start, numel), ...]},
        tensor count): where each original tensor's piece lies in this rank's partitions;
        reduce_sum(t) sums `t` in place over the ranks holding the other pieces. Each adapted
        flat partition then costs one reduce of 2 x count float64 values per step (a
        collective: every rank steps the same groups in the same order)."""
        self._resolve, self._reduce_sum = resolve, reduce_sum
        self._segments, self._count = resolve()
        self._pieces: dict = {}

    def _pieces_of(self, p: torch.Tensor) -> tuple:
        """(segments, their tensor indices on p's device, the uncovered (start, numel) ranges:
        the partition's alignment padding) of flat partition p, worked out once per partition."""
        key = p.untyped_storage().data_ptr()
        if key not in self._pieces:
            if key not in self._segments:   # partitions re-allocated (e.g. by a load): look again
                self._segments, self._count = self._resolve()
            if key not in self._segments:
                raise RuntimeError("Lamb: a flat partition of the optimizer maps to no model tensor; per-tensor "
                                   "trust ratios cannot be formed (parallel/ds_internals.fragment_segments)")
            segments = sorted(self._segments[key], key=lambda seg: seg[1])
            gaps, at = [], 0
            for _, start, numel in segments:
                if start > at:
                    gaps.append((at, start - at))
                at = max(at, start + numel)
            if at < p.numel():
                gaps.append((at, p.numel() - at))
            index = torch.tensor([i for i, _, _ in segments], device=p.device)
            self._pieces[key] = (segments, index, gaps)
        return self._pieces[key]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        segmented = getattr(self, "_resolve", None) is not None
        for group in self.param_groups:
            for p in group["params"]:
                if segmented and group["adapt"]:
                    self._step_segmented(p, group)
                    continue
                if p.grad is None:
                    continue
                update, data = self._update(p, group)
                if group["adapt"]:
                    w_norm = data.norm().double()
                    u_norm = update.norm().double()
                    ratio = (w_norm / u_norm).clamp(0.0, group["max_trust"])
                    trust = torch.where((w_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio))
                    p.add_((update * (trust * -group["lr"])).to(p.dtype))
                else:
                    p.add_((-group["lr"] * update).to(p.dtype))
        return loss

    def _update(self, p: torch.Tensor, group: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance p's moments by its gradient; (Adam update + weight decay term, p in fp32)."""
        beta1, beta2 = group["betas"]
        grad = p.grad.float()
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
        state["step"] += 1
        t = state["step"].double()  # CPU scalar: bias corrections in float64, no device sync
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        update = m_hat / (v_hat.sqrt() + group["eps"])
        data = p.float()
        if group["weight_decay"]:
            update.add_(data, alpha=group["weight_decay"])
        return update, data

    def _step_segmented(self, p: torch.Tensor, group: dict) -> None:
        """One flat partition: squared norms of every tensor piece it holds, summed with the
        other ranks' pieces in one reduce, then each piece scaled by its tensor's trust ratio."""
        segments, index, gaps = self._pieces_of(p)
        sq = torch.zeros(2, self._count, dtype=torch.float64, device=p.device)
        update = data = None
        if p.grad is not None:
            update, data = self._update(p, group)
            if segments:
                pieces = [(data.narrow(0, s, n), update.narrow(0, s, n)) for _, s, n in segments]
                sq[0].index_add_(0, index, torch.stack([torch.linalg.vector_norm(w, dtype=torch.float64).square()
                                                        for w, _ in pieces]))
                sq[1].index_add_(0, index, torch.stack([torch.linalg.vector_norm(u, dtype=torch.float64).square()
                                                        for _, u in pieces]))
        self._reduce_sum(sq)   # every rank, with or without a gradient: a collective
        if update is None:
            return
        w_norm, u_norm = sq.sqrt()
        ratio = (w_norm / u_norm).clamp(0.0, group["max_trust"])
        scale = torch.where((w_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio)) * -group["lr"]
        for i, s, n in segments:
            update.narrow(0, s, n).mul_(scale[i])
        for s, n in gaps:          # alignment padding of the partition: a plain Adam step
            update.narrow(0, s, n).mul_(-group["lr"])
        p.add_(update.to(p.dtype))


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str = "cpu") -> Optimizer:
    """The client optimizer handed to deepspeed.initialize (impl=torch, or any LAMB).

    AdamW is torch's fused kernel where the optimizer steps on CUDA (one launch for all tensors)
    and the foreach one elsewhere (device_type: where its parameters live: "cpu" under optimizer
    offload). Both are deterministic, so a resume is exact."""
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"optim.name={cfg.name!r}: expected one of {', '.join(OPTIMIZERS)}")
    groups = param_groups(model, cfg.weight_decay)
    betas = tuple(float(b) for b in cfg.betas)
    if cfg.name == "lamb":
        return Lamb(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    for g in groups:
        g.pop("adapt")
    kernel = {"fused": True} if device_type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay, **kernel)


def uses_client_optimizer(cfg: OptimConfig) -> bool:
    """False only for impl=deepspeed AdamW, which ds_config puts in the DeepSpeed config."""
    if cfg.impl not in IMPLS:
        raise ValueError(f"optim.impl={cfg.impl!r}: expected one of {', '.join(IMPLS)}")
    return not (cfg.name == "adamw" and cfg.impl == "deepspeed")
