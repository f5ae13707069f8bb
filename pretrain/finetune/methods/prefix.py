"""Prefix tuning (Li & Liang 2021; for encoders as in P-tuning v2, Liu et al. 2022): every
self-attention layer attends to `num_virtual_tokens` trainable key/value vectors prepended to its
own keys and values; queries, the residual stream and the backbone weights are unchanged.

Written by hand: peft's PrefixTuningConfig passes the prefix as `past_key_values`, which BERT and
ALBERT in transformers 5 no longer accept ("Model does not support past key values which are
required for prefix tuning", checked with peft 0.21 / transformers 5.24). Instead the prefix enters
through transformers' documented attention extension point: an attention function registered in
`AttentionInterface` (with sdpa's mask function in `AttentionMaskInterface`) that concatenates the
module's prefix to key/value and widens the padding mask, then calls the stock sdpa attention.
ALBERT shares its layers, so a shared layer's prefix is shared too. ModernBERT's local layers keep
their window over the real tokens (the sliding-window mask is made by sdpa's mask function); the
prefix, which has no position, is visible to every query.
"""
from __future__ import annotations

import torch
from torch import nn

ATTN_NAME = "prefix_sdpa"


class PrefixKV(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, num_tokens: int, std: float):
        super().__init__()
        self.key = nn.Parameter(torch.randn(num_heads, num_tokens, head_dim) * std)
        self.value = nn.Parameter(torch.randn(num_heads, num_tokens, head_dim) * std)


def prefix_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    prefix = getattr(module, "prefix", None)
    if prefix is not None:
        batch = key.shape[0]
        pk = prefix.key.to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        pv = prefix.value.to(value.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        key, value = torch.cat([pk, key], dim=2), torch.cat([pv, value], dim=2)
        if attention_mask is not None:  # every query may attend to every prefix position
            shape = (*attention_mask.shape[:-1], pk.shape[2])
            fill = torch.ones(shape, dtype=torch.bool, device=attention_mask.device) if attention_mask.dtype == torch.bool \
                else torch.zeros(shape, dtype=attention_mask.dtype, device=attention_mask.device)
            attention_mask = torch.cat([fill, attention_mask], dim=-1)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, prefix_sdpa_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def apply(model, mcfg, spec, head_names) -> list[str]:
    from ..backbones import modules_of

    modules = modules_of(model, spec.attention_classes)
    if not modules:
        raise ValueError(f"method=prefix: found no self-attention modules {spec.attention_classes} in this model")
    config = model.config
    heads = config.num_attention_heads
    register()
    for m in modules:
        m.prefix = PrefixKV(heads, config.hidden_size // heads, mcfg.num_virtual_tokens, mcfg.init_std)
    model.set_attn_implementation(ATTN_NAME)
    return [".prefix."]
