"""ModernBERT (Warner et al. 2024): pre-LN, bias-free, GeGLU, rotary, alternating local/global.

The same computation as transformers' `ModernBertForMaskedLM` (tests compare logits to 1e-5):
  embeddings:  token embedding -> LayerNorm -> dropout            (no position or segment tables)
  layer i:     h = x + Wo(attn(attn_norm(x)))   attn_norm is the identity for layer 0 (the
               embedding norm precedes it); rotary on q, k with theta global_rope_theta on global
               layers (i % global_attn_every_n_layers == 0) and local_rope_theta on local ones,
               which attend to |i - j| <= local_attention // 2
               y = h + Wo(drop(act(a) * g)),  (a, g) = Wi(mlp_norm(h)).chunk(2)
  final_norm, then the shared heads (MLM: dense -> act -> norm -> tied decoder + bias).
Module names follow transformers' (`tok_embeddings`, `attn.Wqkv`, `mlp.Wi`, ...), so conversion
is a renaming of prefixes (pretrain/hf/modernbert.py).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .activations import activation
from .attention import AttentionContext, apply_rotary
from .config import ModelConfig
from .encoder import Encoder, EncoderLayer
from .registry import Architecture, Parts


class ModernBertEmbeddings(nn.Module):
    """`embeddings((input_ids, token_type_ids, attention_mask, position_ids, labels))` (pipeline
    form) or `embeddings((input_ids, token_type_ids), ctx)`; segment ids are ignored (none exist)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.norm_bias)
        self.drop = nn.Dropout(cfg.hidden_dropout)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.tok_embeddings

    def forward(self, inputs, ctx: Optional[AttentionContext] = None):
        if ctx is not None:
            return self.drop(self.norm(self.tok_embeddings(inputs[0])))
        input_ids, _token_type_ids, attention_mask, position_ids, labels = inputs
        return self.drop(self.norm(self.tok_embeddings(input_ids))), position_ids, attention_mask, labels


def is_global(cfg: ModelConfig, index: int) -> bool:
    return not cfg.local_attention or index % cfg.global_attn_every_n_layers == 0


class ModernBertAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.Wqkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.linear_bias)
        self.Wo = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.linear_bias)
        self.window = None if is_global(cfg, index) else cfg.local_attention
        self.theta = cfg.global_rope_theta if self.window is None else cfg.local_rope_theta
        self.attention_dropout = cfg.attention_dropout
        self.out_drop = nn.Dropout(cfg.attention_dropout)

    def apply_runtime_settings(self, cfg: ModelConfig) -> None:
        """Settings without weights of their own (a training phase changes them): the rotary theta
        of this layer's kind and, on a local layer, the window."""
        if self.window is None:
            self.theta = cfg.global_rope_theta
        else:
            self.window, self.theta = cfg.local_attention, cfg.local_rope_theta

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        lead = x.shape[:-1]
        q, k, v = self.Wqkv(x).view(*lead, 3, self.num_heads, self.head_dim).unbind(-3)
        cos, sin = ctx.rotary(self.theta, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = ctx.attend(q, k, v, window=self.window, dropout_p=self.attention_dropout if self.training else 0.0)
        return self.out_drop(self.Wo(out.reshape(*lead, -1)))


class ModernBertMLP(nn.Module):
    """GeGLU: Wi -> (input, gate) -> act(input) * gate -> dropout -> Wo."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.Wi = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.linear_bias)
        self.act = activation(cfg.hidden_act)
        self.drop = nn.Dropout(cfg.hidden_dropout)
        self.Wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.linear_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(self.drop(self.act(a) * gate))


class ModernBertEncoderLayer(EncoderLayer):
    def __init__(self, cfg: ModelConfig, index: int):
        super().__init__()
        norm = lambda: nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.norm_bias)  # noqa: E731
        self.attn_norm = nn.Identity() if index == 0 else norm()
        self.attn = ModernBertAttention(cfg, index)
        self.mlp_norm = norm()
        self.mlp = ModernBertMLP(cfg)

    def block(self, x, ctx):
        x = x + self.attn(self.attn_norm(x), ctx)
        return x + self.mlp(self.mlp_norm(x))


def _build(cfg: ModelConfig) -> Parts:
    layers = [ModernBertEncoderLayer(cfg, i) for i in range(cfg.num_layers)]
    final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.norm_bias)
    return Parts(ModernBertEmbeddings(cfg), Encoder(layers), final_norm)


def init_weights(module: nn.Module, cfg: ModelConfig) -> None:
    """transformers' ModernBERT init: truncated normals (cutoff initializer_cutoff_factor x std),
    std = initializer_range for embeddings and input projections, / sqrt(2 x layers) for output
    projections and the head's dense; zero biases; LayerNorm 1 / 0; the padding row 0."""
    std = cfg.initializer_range
    out_std = std / math.sqrt(2.0 * cfg.num_layers)
    cutoff = cfg.initializer_cutoff_factor

    def trunc(weight, s):
        nn.init.trunc_normal_(weight, mean=0.0, std=s, a=-cutoff * s, b=cutoff * s)

    for name, m in module.named_modules():
        if isinstance(m, nn.Embedding):
            trunc(m.weight, std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.Linear):
            is_out = name.endswith(("attn.Wo", "mlp.Wo", "mlm.dense"))
            trunc(m.weight, out_std if is_out else std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _validate(cfg: ModelConfig) -> None:
    if cfg.embedding_size not in (None, cfg.hidden_size):
        raise ValueError(f"model.embedding_size={cfg.embedding_size}: modernbert ties it to hidden_size (leave it null)")
    if cfg.num_hidden_groups != 1 or cfg.inner_group_num != 1:
        raise ValueError("model.num_hidden_groups / inner_group_num are ALBERT-only; modernbert has distinct layers")
    if (cfg.hidden_size // cfg.num_heads) % 2:
        raise ValueError(f"model.hidden_size / num_heads = {cfg.hidden_size // cfg.num_heads}: rotary positions need "
                         "an even head size")
    if cfg.local_attention < 0 or cfg.local_attention % 2:
        raise ValueError(f"model.local_attention={cfg.local_attention}: must be an even number of tokens "
                         "(the window is +-local_attention/2), or 0 for global attention in every layer")
    if cfg.global_attn_every_n_layers < 1:
        raise ValueError(f"model.global_attn_every_n_layers={cfg.global_attn_every_n_layers}: must be >= 1")
    for key in ("global_rope_theta", "local_rope_theta"):
        if getattr(cfg, key) <= 0:
            raise ValueError(f"model.{key}={getattr(cfg, key)}: must be > 0")


def _applications(cfg: ModelConfig) -> int:
    return cfg.num_layers


def window_pairs(length: int, window: Optional[int]) -> int:
    """Query-key pairs attention computes for one example: l^2, or within |i - j| <= window // 2."""
    if not window:
        return length * length
    k = min(window // 2, length - 1)
    return length + 2 * (k * length - k * (k + 1) // 2)


def _encoder_flops(cfg: ModelConfig, lengths) -> float:
    """Per layer 2*T*H*3H (Wqkv) + 2*2*H*pairs (QK^T, AV; pairs within the window on local
    layers) + 2*T*H*H (Wo) + 2*T*H*2I (Wi) + 2*T*I*H (Wo of the MLP)."""
    H, I = cfg.hidden_size, cfg.intermediate_size
    tokens = float(sum(lengths))
    total = 0.0
    for i in range(cfg.num_layers):
        window = None if is_global(cfg, i) else cfg.local_attention
        pairs = float(sum(window_pairs(int(n), window) for n in lengths))
        total += 2 * tokens * H * 3 * H + 2 * 2 * pairs * H + 2 * tokens * H * H + 2 * tokens * H * 2 * I \
            + 2 * tokens * I * H
    return total


ARCHITECTURES = (
    Architecture("modernbert", _build, init_weights, _validate, _applications, _encoder_flops,
                 hf_module="pretrain.hf.modernbert", hf_model_types=("modernbert",),
                 description="ModernBERT (Warner et al. 2024): pre-LN, bias-free, GeGLU, rotary, local/global attention"),
)
