"""Mask tuning (Zhao et al. 2020, "Masking as an Efficient Alternative to Finetuning for Pretrained
Language Models"): every linear layer of the encoder gets a real-valued score per weight; the
forward pass uses W * m with the binary mask m = (score > threshold), and the backward pass treats
the binarisation as the identity (straight-through estimator), so scores learn which pretrained
weights to drop. The weights themselves never change. Per task only the mask is stored, 1 bit per
weight (np.packbits), plus the head.

Written by hand: no maintained library implements it (peft has no masking method).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BITS_SUFFIX = ".mask_bits"


class MaskedLinear(nn.Module):
    def __init__(self, base: nn.Linear, threshold: float, init_score: float):
        super().__init__()
        self.base = base
        self.threshold = threshold
        self.init_score = init_score
        self.scores = nn.Parameter(torch.full(base.weight.shape, float(init_score)))

    def binary_mask(self) -> torch.Tensor:
        return (self.scores > self.threshold).to(self.scores.dtype)

    def forward(self, x):
        hard = self.binary_mask()
        mask = hard + self.scores - self.scores.detach()  # value = hard exactly; gradient flows to scores
        return F.linear(x, self.base.weight * mask.to(self.base.weight.dtype), self.base.bias)

    def set_from_bits(self, bits: np.ndarray) -> None:
        """Scores that reproduce a stored mask exactly (above / below the threshold)."""
        flat = np.unpackbits(bits, count=self.scores.numel()).astype(bool)
        margin = abs(self.init_score - self.threshold)
        on = torch.from_numpy(flat.reshape(tuple(self.scores.shape)))
        with torch.no_grad():
            self.scores.copy_(torch.where(on, self.threshold + margin, self.threshold - margin))


def _encoder_linears(model, spec) -> list[tuple[nn.Module, str]]:
    from ..backbones import modules_of

    found = []
    for layer in modules_of(model, spec.layer_classes):
        for parent in layer.modules():
            for attr, child in parent.named_children():
                if isinstance(child, nn.Linear):
                    found.append((parent, attr))
    return found


def apply(model, mcfg, spec, head_names) -> list[str]:
    linears = _encoder_linears(model, spec)
    if not linears:
        raise ValueError(f"method=mask: found no encoder layers {spec.layer_classes} in this model")
    for parent, attr in linears:
        setattr(parent, attr, MaskedLinear(getattr(parent, attr), mcfg.threshold, mcfg.init_score))
    return [".scores"]


def masked_modules(model) -> dict[str, MaskedLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MaskedLinear)}


def pack(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each `<module>.scores` by its mask as packed bits (uint8)."""
    for name, module in masked_modules(model).items():
        state.pop(f"{name}.scores", None)
        bits = np.packbits(module.binary_mask().detach().cpu().numpy().astype(bool).ravel())
        state[name + BITS_SUFFIX] = torch.from_numpy(bits)
    return state


def unpack(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Set every module's scores from its stored bits; returns the rest of the state."""
    state = dict(state)
    for name, module in masked_modules(model).items():
        key = name + BITS_SUFFIX
        if key not in state:
            raise KeyError(f"task weights lack {key}")
        module.set_from_bits(state.pop(key).numpy())
    return state
