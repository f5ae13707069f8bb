"""Model FLOPs (for MFU): matmul FLOPs only, 2*m*n*k each, forward+backward = 3x forward.

Counted per sequence of L tokens (H hidden, I intermediate, E embedding width, V vocab,
N layer applications = num_layers * inner_group_num, M masked positions):
  ALBERT embedding projection  2*L*E*H
  per layer                    2*L*H*3H (QKV) + 2*L*L*H (QK^T) + 2*L*L*H (AV) + 2*L*H*H (out)
                               + 2*2*L*H*I (feed-forward)
  MLM head (M positions only)  2*M*H*E (transform) + 2*M*E*V (tied decoder)
  sentence head (on [CLS])     2*H*H (pooler) + 2*H*2 (classifier)
Embedding lookups, LayerNorm, softmax, activations and biases are not counted (the usual MFU
convention, e.g. PaLM/nanoGPT). Padding tokens are counted: the model computes them.
"""
from __future__ import annotations

from .config import ModelConfig


def forward_flops_per_sequence(cfg: ModelConfig, seq_len: int, n_masked: float) -> float:
    """Forward matmul FLOPs for one sequence of `seq_len` tokens with `n_masked` MLM positions."""
    L, H, I, V = seq_len, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    E = cfg.embedding_size or H
    n_layers = cfg.num_layers * (cfg.inner_group_num if cfg.arch == "albert" else 1)
    projection = 2 * L * E * H if cfg.arch == "albert" else 0
    per_layer = 2 * L * H * 3 * H + 2 * 2 * L * L * H + 2 * L * H * H + 2 * 2 * L * H * I
    mlm = 2 * n_masked * H * E + 2 * n_masked * E * V
    sentence = (2 * H * H + 2 * H * 2) if cfg.sentence_head != "none" else 0
    return float(projection + n_layers * per_layer + mlm + sentence)


def flops_per_sequence(cfg: ModelConfig, seq_len: int, n_masked: float) -> float:
    """Forward + backward model FLOPs for one sequence (3x forward)."""
    return 3.0 * forward_flops_per_sequence(cfg, seq_len, n_masked)


def flops_per_step(cfg: ModelConfig, batch_size: int, seq_len: int, n_masked_total: float) -> float:
    """Forward + backward model FLOPs for `batch_size` sequences of `seq_len` with
    `n_masked_total` masked positions over the whole batch (MLM cost is linear in it)."""
    per_seq_no_mlm = flops_per_sequence(cfg, seq_len, 0)
    E = cfg.embedding_size or cfg.hidden_size
    mlm_per_token = 3.0 * (2 * cfg.hidden_size * E + 2 * E * cfg.vocab_size)
    return batch_size * per_seq_no_mlm + n_masked_total * mlm_per_token
