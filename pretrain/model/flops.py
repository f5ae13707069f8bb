"""Model FLOPs (for MFU): matmul FLOPs only, 2*m*n*k each, forward+backward = 3x forward.

Counted on the real tokens of the examples (H hidden, E embedding width, V vocab, M masked
positions); the encoder's share is the architecture's own count (`Architecture.encoder_flops`
in pretrain/model/bert.py, modernbert.py: QKV, attention over each example's own tokens,
output projection, feed-forward), plus the heads:
  MLM head (M positions only)  2*M*H*E (transform) + 2*M*E*V (tied decoder)
  sentence head (per example)  2*H*H (pooler) + 2*H*2 (classifier)
Embedding lookups, LayerNorm, softmax, activations and biases are not counted (the usual MFU
convention, e.g. PaLM/nanoGPT). Pads are not counted: model FLOPs are what the examples need
(an unpacked, padded run computes more than it is credited with; `train/fill` says how much).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from . import registry
from .config import ModelConfig
from .layout import batch_layout


def forward_flops(cfg: ModelConfig, lengths: Sequence[int], n_masked: float) -> float:
    """Forward matmul FLOPs for examples of these token `lengths` with `n_masked` MLM positions in all."""
    H, V = cfg.hidden_size, cfg.vocab_size
    E = cfg.embedding_size or H
    encoder = registry.get(cfg.arch).encoder_flops(cfg, lengths)
    mlm = 2 * n_masked * H * E + 2 * n_masked * E * V
    sentence = len(lengths) * (2 * H * H + 2 * H * 2) if cfg.sentence_head != "none" else 0
    return float(encoder + mlm + sentence)


def forward_flops_per_sequence(cfg: ModelConfig, seq_len: int, n_masked: float) -> float:
    """Forward matmul FLOPs for one sequence of `seq_len` tokens with `n_masked` MLM positions."""
    return forward_flops(cfg, [seq_len], n_masked)


def flops_per_sequence(cfg: ModelConfig, seq_len: int, n_masked: float) -> float:
    """Forward + backward model FLOPs for one sequence (3x forward)."""
    return 3.0 * forward_flops_per_sequence(cfg, seq_len, n_masked)


def flops_per_step(cfg: ModelConfig, batch_size: int, seq_len: int, n_masked_total: float) -> float:
    """Forward + backward model FLOPs for `batch_size` sequences of `seq_len` with
    `n_masked_total` masked positions over the whole batch (MLM cost is linear in it)."""
    return 3.0 * forward_flops(cfg, [seq_len] * batch_size, n_masked_total)


def example_lengths(batch: dict) -> np.ndarray:
    """Token lengths of every example of a batch (CPU tensors; docs/architecture.md "Batches")."""
    cu = batch.get("cu_seqlens")
    if cu is None:   # a batch not from our loader: the same layout function the loader uses
        mask = batch.get("attention_mask")
        mask = torch.ones_like(batch["input_ids"]) if mask is None else mask
        cu = batch_layout(mask, batch.get("position_ids"))["cu_seqlens"]
    return np.diff(cu.numpy().astype(np.int64))


def batch_flops(cfg: ModelConfig, batch: dict, forward=forward_flops) -> float:
    """Forward + backward model FLOPs of one (CPU) batch; `forward`: the objective's forward FLOPs
    (pretrain.objectives.Objective.forward_flops), the model's own by default."""
    labels = batch["labels"]
    n_masked = float((labels != -100).sum()) if isinstance(labels, torch.Tensor) else 0.0
    return 3.0 * forward(cfg, [int(n) for n in example_lengths(batch)], n_masked)
