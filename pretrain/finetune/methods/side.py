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


class SideTunedEncoder(nn.Module):
    def __init__(self, encoder: nn.Module, side: SideNetwork, alpha_init: float):
        super().__init__()
        self.encoder = encoder
        self.side = side
        self.alpha_logit = nn.Parameter(torch.tensor(math.log(alpha_init / (1 - alpha_init))))

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.alpha_logit)

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        out = self.encoder(hidden_states, attention_mask, *args, **kwargs)
        padding = padding_from_mask(attention_mask, *hidden_states.shape[:2])
        side = self.side(hidden_states, padding)
        a = self.alpha.to(side.dtype)
        out.last_hidden_state = a * out.last_hidden_state + (1 - a) * side.to(out.last_hidden_state.dtype)
        return out


def apply(model, mcfg) -> list[str]:
    base = model.base_model  # BertModel / AlbertModel
    config = base.config
    in_dim = getattr(config, "embedding_size", None) if config.model_type == "albert" else config.hidden_size
    side = SideNetwork(in_dim, config.hidden_size, mcfg.hidden, mcfg.layers, mcfg.heads, config.hidden_dropout_prob)
    base.encoder = SideTunedEncoder(base.encoder, side, mcfg.alpha_init)
    return [".side.", "alpha_logit"]
