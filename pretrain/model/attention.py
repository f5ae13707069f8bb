"""Multi-head self-attention with a fused QKV projection and SDPA (post-LN residual block)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class SelfAttention(nn.Module):
    """x -> LayerNorm(x + dropout(out(attention(x)))) as in BERT/ALBERT (post-LN).

    `qkv` is one Linear of width 3*hidden (rows: query, key, value) so the three projections are
    one matmul; conversion to HF splits/concatenates it along dim 0.

    x: [B, L, H]; key_mask: [B, 1, 1, L] bool (True = attend) or None. Returns [B, L, H].
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"model.hidden_size={cfg.hidden_size} is not divisible by model.num_heads={cfg.num_heads}")
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.attention_dropout = cfg.attention_dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, l, h = x.shape
        # [B, L, 3, heads, d] -> three [B, heads, L, d] strided views, no copy.
        q, k, v = self.qkv(x).view(b, l, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        ctx = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.attention_dropout if self.training else 0.0
        )
        ctx = ctx.transpose(1, 2).reshape(b, l, h)
        return self.norm(x + self.dropout(self.out(ctx)))
