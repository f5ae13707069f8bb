"""Side-tuning (Zhang et al. 2020, "Side-Tuning: A Baseline for Network Adaptation via Additive
Side Networks"): the backbone stays frozen; a small side network reads the same input (the
embedding output) and the two representations are blended, h = a * h_base + (1 - a) * h_side with
a = sigmoid(learned scalar). The task head reads h. The side network here is a narrow transformer
(down-projection, `layers` encoder layers of width `hidden`, up-projection; the up-projection
starts at zero, so training starts from a * h_base).

Written by hand: no maintained library implements side-tuning for encoders (peft's ShadowPEFT is a
different, decoder-only method).
"""
from __future__ import annotations

import math

import torch
from torch import nn


class SideNetwork(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.down = nn.Linear(in_dim, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.up = nn.Linear(hidden, out_dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        return self.up(self.encoder(self.down(x), src_key_padding_mask=padding))


def padding_from_mask(mask, batch: int, length: int) -> torch.Tensor | None:
    """Key padding [B, L] (True = pad) from what transformers hands the encoder: None (no padding),
    a 2-D 0/1 mask, a 4-D bool mask (True = attend) or a 4-D additive float mask."""
    if mask is None:
        return None
    if mask.dim() == 2:
        return mask == 0
    row = mask[:, 0, 0, :] if mask.shape[2] > 1 else mask[:, 0, -1, :]
    return ~row if row.dtype == torch.bool else row < 0


class SideTuning(nn.Module):
    """The side network and its blend weight, attached to the base model; hooks feed it the
    embedding output and blend its result into the encoder's final hidden states."""

    def __init__(self, side: SideNetwork, alpha_init: float):
        super().__init__()
        self.side = side
        self.alpha_logit = nn.Parameter(torch.tensor(math.log(alpha_init / (1 - alpha_init))))
        self._mask = self._input = None

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.alpha_logit)

    def remember_mask(self, module, args, kwargs) -> None:
        self._mask = kwargs.get("attention_mask")

    def remember_input(self, module, args, output) -> None:
        self._input = output

    def blend(self, module, args, output):
        hidden = output if torch.is_tensor(output) else output.last_hidden_state
        padding = padding_from_mask(self._mask, *hidden.shape[:2])
        side = self.side(self._input, padding)
        a = self.alpha.to(side.dtype)
        blended = a * hidden + (1 - a) * side.to(hidden.dtype)
        self._mask = self._input = None
        if torch.is_tensor(output):
            return blended
        output.last_hidden_state = blended
        return output


def apply(model, mcfg, spec, head_names) -> list[str]:
    """Attach at the architecture's spec: the side network reads `spec.side_input`'s output (the
    embeddings) and is blended at `spec.side_output` (BERT: the encoder's output; ModernBERT: the
    final norm's)."""
    from ..backbones import submodule

    base = model.base_model  # BertModel / AlbertModel / ModernBertModel
    config = base.config
    in_dim = getattr(config, "embedding_size", None) or config.hidden_size  # ALBERT: factorised embeddings
    dropout = getattr(config, "hidden_dropout_prob", getattr(config, "mlp_dropout", 0.0))
    side = SideNetwork(in_dim, config.hidden_size, mcfg.hidden, mcfg.layers, mcfg.heads, dropout)
    base.side_tuning = SideTuning(side, mcfg.alpha_init)
    base.register_forward_pre_hook(base.side_tuning.remember_mask, with_kwargs=True)
    submodule(base, spec.side_input).register_forward_hook(base.side_tuning.remember_input)
    submodule(base, spec.side_output).register_forward_hook(base.side_tuning.blend)
    return [".side_tuning."]
