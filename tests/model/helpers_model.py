"""Tiny configs and batches shared by the model tests (not a test module)."""
from __future__ import annotations

import torch

from pretrain.model import ModelConfig


def tiny_cfg(arch: str = "bert", **overrides) -> ModelConfig:
    base = dict(arch=arch, vocab_size=97, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=48,
                max_position_embeddings=64, hidden_dropout=0.1, attention_dropout=0.1)
    if arch == "albert":
        base.update(embedding_size=16, hidden_act="gelu_new")
    base.update(overrides)
    return ModelConfig(**base)


def tiny_batch(cfg: ModelConfig, batch: int = 3, seq: int = 12, seed: int = 0, pad_from: int | None = 8) -> dict:
    """[CLS]=2 ... with token types 0/1, 15%-ish labels (at least one per row), row 1 padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, cfg.vocab_size, (batch, seq), generator=g)
    ids[:, 0] = 2
    tt = torch.zeros_like(ids)
    tt[:, seq // 2:] = 1
    mask = torch.ones_like(ids)
    if pad_from is not None:
        mask[1, pad_from:] = 0
        ids[1, pad_from:] = cfg.pad_token_id
        tt[1, pad_from:] = 0
    chosen = (torch.rand(batch, seq, generator=g) < 0.2) & mask.bool()
    chosen[:, 1] = True
    labels = torch.where(chosen, torch.randint(5, cfg.vocab_size, (batch, seq), generator=g), torch.full_like(ids, -100))
    return {"input_ids": ids, "token_type_ids": tt, "attention_mask": mask, "labels": labels,
            "sentence_label": torch.tensor([0, 1, -100, 1][:batch]) if batch <= 4 else torch.randint(0, 2, (batch,), generator=g)}


def run(model, batch, **kw):
    return model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], batch.get("labels"), **kw)
