"""BERT (post-LN, as published) and ALBERT (factorised embeddings, shared layer groups)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .activations import activation
from .attention import AttentionContext
from .config import ModelConfig
from .encoder import Encoder, EncoderLayer
from .registry import Architecture, Parts


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout (BERT/ALBERT).

    ALBERT factorises the embedding: tables are `embedding_size` wide and a Linear projects to
    `hidden_size` (HF keeps that projection in the encoder; we keep it here so every encoder layer
    has the same input and output width, which the pipeline form needs).

    `embeddings((input_ids, token_type_ids, attention_mask, position_ids, labels))` (pipeline form,
    [B, L] each) -> (hidden [B,L,H], position_ids, attention_mask, labels);
    `embeddings((input_ids, token_type_ids), ctx)` -> hidden in the context's layout.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        emb = cfg.embedding_size or cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, emb, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, emb)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, emb)
        self.norm = nn.LayerNorm(emb, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.projection = nn.Linear(emb, cfg.hidden_size) if emb != cfg.hidden_size or cfg.arch == "albert" else None

    def embed(self, input_ids, token_type_ids, positions) -> torch.Tensor:
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        x = self.dropout(self.norm(x))
        return self.projection(x) if self.projection is not None else x

    def forward(self, inputs, ctx: Optional[AttentionContext] = None):
        if ctx is not None:
            input_ids, token_type_ids = inputs
            return self.embed(input_ids, token_type_ids, ctx.token_positions())
        input_ids, token_type_ids, attention_mask, position_ids, labels = inputs
        return self.embed(input_ids, token_type_ids, position_ids), position_ids, attention_mask, labels


class SelfAttention(nn.Module):
    """x -> LayerNorm(x + dropout(out(attention(x)))) as in BERT/ALBERT (post-LN).

    `qkv` is one Linear of width 3*hidden (rows: query, key, value) so the three projections are
    one matmul; conversion to HF splits/concatenates it along dim 0.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.attention_dropout = cfg.attention_dropout

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        lead = x.shape[:-1]
        # [..., 3, heads, d] -> three strided views in the token-major layout, no copy.
        q, k, v = self.qkv(x).view(*lead, 3, self.num_heads, self.head_dim).unbind(-3)
        ctx_out = ctx.attend(q, k, v, window=None,
                             dropout_p=self.attention_dropout if self.training else 0.0)
        return self.norm(x + self.dropout(self.out(ctx_out.reshape(*lead, -1))))


class BertEncoderLayer(EncoderLayer):
    """Attention block then feed-forward block, both post-LN."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.ffn_in = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = activation(cfg.hidden_act)
        self.ffn_out = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def block(self, x, ctx):
        x = self.attention(x, ctx)
        return self.ffn_norm(x + self.dropout(self.ffn_out(self.act(self.ffn_in(x)))))


def _albert_order(cfg: ModelConfig) -> list[int]:
    """Layer application i runs group floor(i * groups / num_layers), all its inner layers in
    order (HF's AlbertTransformer)."""
    groups, inner = cfg.num_hidden_groups, cfg.inner_group_num
    return [int(i / (cfg.num_layers / groups)) * inner + j for i in range(cfg.num_layers) for j in range(inner)]


def _build(cfg: ModelConfig) -> Parts:
    if cfg.arch == "albert":
        layers = [BertEncoderLayer(cfg) for _ in range(cfg.num_hidden_groups * cfg.inner_group_num)]
        encoder = Encoder(layers, _albert_order(cfg))
    else:
        encoder = Encoder([BertEncoderLayer(cfg) for _ in range(cfg.num_layers)])
    return Parts(Embeddings(cfg), encoder, None, sentence_dropout=cfg.hidden_dropout if cfg.arch == "albert" else 0.0)


def init_weights(module: nn.Module, cfg: ModelConfig) -> None:
    """BERT initialisation: Linear/Embedding weights ~ N(0, initializer_range), biases 0,
    LayerNorm weight 1 / bias 0, the padding row of an embedding 0."""
    std = cfg.initializer_range
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _validate(cfg: ModelConfig) -> None:
    if cfg.arch == "bert" and cfg.embedding_size not in (None, cfg.hidden_size):
        raise ValueError(f"model.embedding_size={cfg.embedding_size} needs model.arch=albert (BERT ties it to hidden_size)")
    if cfg.arch == "bert" and (cfg.num_hidden_groups != 1 or cfg.inner_group_num != 1):
        raise ValueError("model.num_hidden_groups / inner_group_num are ALBERT-only; set model.arch=albert")
    if cfg.arch == "albert" and not 1 <= cfg.num_hidden_groups <= cfg.num_layers:
        raise ValueError(f"model.num_hidden_groups={cfg.num_hidden_groups} must be in [1, num_layers={cfg.num_layers}]")
    if not cfg.linear_bias or not cfg.norm_bias:
        raise ValueError(f"model.linear_bias / norm_bias = false: {cfg.arch} has biases (bias-free is model.arch=modernbert)")
    if cfg.local_attention:
        raise ValueError(f"model.local_attention={cfg.local_attention}: {cfg.arch} attends globally "
                         "(local windows are model.arch=modernbert)")


def _applications(cfg: ModelConfig) -> int:
    return cfg.num_layers * (cfg.inner_group_num if cfg.arch == "albert" else 1)


def _encoder_flops(cfg: ModelConfig, lengths) -> float:
    """Per layer 2*T*H*3H (QKV) + 2*2*H*sum(l^2) (QK^T, AV) + 2*T*H*H (out) + 2*2*T*H*I (FFN);
    ALBERT adds the embedding projection 2*T*E*H."""
    H, I = cfg.hidden_size, cfg.intermediate_size
    E = cfg.embedding_size or H
    tokens = float(sum(lengths))
    pairs = float(sum(n * n for n in lengths))
    per_layer = 2 * tokens * H * 3 * H + 2 * 2 * pairs * H + 2 * tokens * H * H + 2 * 2 * tokens * H * I
    projection = 2 * tokens * E * H if cfg.arch == "albert" else 0.0
    return projection + _applications(cfg) * per_layer


ARCHITECTURES = (
    Architecture("bert", _build, init_weights, _validate, _applications, _encoder_flops,
                 hf_module="pretrain.hf.bert", hf_model_types=("bert",),
                 description="BERT (Devlin et al. 2019): post-LN, learned positions, GELU FFN"),
    Architecture("albert", _build, init_weights, _validate, _applications, _encoder_flops,
                 hf_module="pretrain.hf.bert", hf_model_types=("albert",),
                 description="ALBERT (Lan et al. 2020): factorised embeddings, shared layer groups"),
)
