"""A tiny BERT-like model, loss and synthetic batches for the parallel tests.

Self-contained on purpose: pretrain.model is written concurrently and parallel must not depend
on it. Same output fields and loss contract as the real model/objective.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, SEQ, IGNORE = 64, 16, -100


@dataclass
class ToyOutput:
    mlm_logits: torch.Tensor
    mlm_labels: torch.Tensor
    sentence_logits: Optional[torch.Tensor]


class ToyBert(nn.Module):
    def __init__(self, hidden: int = 32, layers: int = 2, dropout: float = 0.1, vocab: int = VOCAB):
        super().__init__()
        self.word = nn.Embedding(vocab, hidden)
        self.position = nn.Embedding(SEQ, hidden)
        self.token_type = nn.Embedding(2, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(
            nn.TransformerEncoderLayer(hidden, 2, 2 * hidden, dropout, batch_first=True)
            for _ in range(layers))
        self.mlm_head = nn.Linear(hidden, vocab)
        self.sentence_head = nn.Linear(hidden, 2)

    def forward(self, input_ids, token_type_ids, attention_mask, labels=None):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(pos)[None] + self.token_type(token_type_ids)
        x = self.drop(self.norm(x))
        pad = attention_mask == 0
        for layer in self.encoder:
            x = layer(x, src_key_padding_mask=pad)
        where = labels != IGNORE
        return ToyOutput(self.mlm_head(x[where]), labels[where], self.sentence_head(x[:, 0]))


def toy_loss(out: ToyOutput, batch: dict, mlm_normalizer, sentence_normalizer=1.0):
    """sum CE / global masked count + sum SOP CE / global sentence count; stats are sums."""
    mlm_ce = F.cross_entropy(out.mlm_logits.float(), out.mlm_labels, reduction="sum")
    sl = batch["sentence_label"]
    sop_ce = F.cross_entropy(out.sentence_logits.float(), sl, reduction="sum", ignore_index=IGNORE)
    loss = mlm_ce / mlm_normalizer + sop_ce / sentence_normalizer
    stats = {"mlm_loss_sum": mlm_ce.detach(),
             "mlm_correct": (out.mlm_logits.argmax(-1) == out.mlm_labels).sum(),
             "mlm_count": float(out.mlm_labels.numel()),
             "sentence_loss_sum": sop_ce.detach(),
             "sentence_count": (sl != IGNORE).sum()}
    return loss, stats


class Counted:
    """A plain loss function `fn(out, batch, mlm_normalizer, sentence_normalizer)` as the engine's
    objective protocol (parallel/engine_base.py): the normalizers are the global counts of masked
    tokens and sentence labels."""
    normalizers = ("labels", "sentence_label")
    loss_fields = ("sentence_label",)

    def __init__(self, fn):
        self.fn = fn

    def counts(self, batch: dict) -> torch.Tensor:
        return torch.stack([(batch[k] != IGNORE).sum().double() if k in batch else torch.zeros((), dtype=torch.float64)
                            for k in self.normalizers])

    def __call__(self, out, batch: dict, normalizers: torch.Tensor):
        return self.fn(out, batch, normalizers[0], normalizers[1])


def make_batch(gen: torch.Generator, size: int) -> dict:
    lengths = torch.randint(SEQ // 2, SEQ + 1, (size,), generator=gen)
    ar = torch.arange(SEQ)[None]
    attention = (ar < lengths[:, None]).long()
    # Tokens from a small subset of the vocabulary: learnable within a few steps.
    ids = torch.randint(5, 21, (size, SEQ), generator=gen) * attention
    types = ((ar >= lengths[:, None] // 2) & (attention == 1)).long()
    chosen = (torch.rand(size, SEQ, generator=gen) < 0.3) & (attention == 1)
    chosen[:, 1] = True  # never an empty micro-batch
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    inputs = torch.where(chosen, torch.full_like(ids, 4), ids)
    return {"input_ids": inputs, "token_type_ids": types, "attention_mask": attention,
            "labels": labels, "sentence_label": torch.randint(0, 2, (size,), generator=gen),
            "doc_id": torch.arange(size)}  # doc_id: an extra key the model must not receive


def global_batch(seed: int, step: int, n_micro: int, micro_size: int) -> list[dict]:
    """The global batch of one step as n_micro micro-batches (independent of the world size)."""
    gen = torch.Generator().manual_seed(seed * 100_003 + step)
    return [make_batch(gen, micro_size) for _ in range(n_micro)]


def rank_micro_batches(seed, step, grad_accum, world, rank, micro_size) -> list[dict]:
    """Rank r's i-th micro-batch is global micro-batch i * world + r."""
    micros = global_batch(seed, step, grad_accum * world, micro_size)
    return [micros[i * world + rank] for i in range(grad_accum)]
