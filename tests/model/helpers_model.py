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


def modern_cfg(**overrides) -> ModelConfig:
    """A tiny ModernBERT: 3 layers (global, local, local), window 4 (+-2 tokens), bias-free."""
    base = dict(linear_bias=False, norm_bias=False, local_attention=4, global_attn_every_n_layers=3,
                layer_norm_eps=1e-5, hidden_dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return tiny_cfg(base.pop("arch", "modernbert"), **base)


def example_ids(cfg: ModelConfig, lengths, seed: int = 0) -> list[torch.Tensor]:
    """One token-id vector per example: [CLS]=2 first, [SEP]=3 last, random ids between."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(5, cfg.vocab_size, (n,), generator=g)
        ids[0], ids[-1] = 2, 3
        out.append(ids)
    return out


def packed_batch(cfg: ModelConfig, rows: list[list[torch.Tensor]], seq: int, seed: int = 0) -> dict:
    """Rows of several examples (each a token-id vector), as pretrain.data packs them: positions
    restart at 0, segment ids 0 then 1 after the first [SEP], ~20% labels, sentence labels at
    each example's first token, pads after the last example."""
    g = torch.Generator().manual_seed(seed)
    b = len(rows)
    ids = torch.full((b, seq), cfg.pad_token_id, dtype=torch.long)
    tt, mask, pos = torch.zeros_like(ids), torch.zeros_like(ids), torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    sentence = torch.full_like(ids, -100)
    for r, examples in enumerate(rows):
        at = 0
        for ex in examples:
            n = len(ex)
            ids[r, at:at + n] = ex
            mask[r, at:at + n] = 1
            pos[r, at:at + n] = torch.arange(n)
            sep = int((ex == 3).nonzero()[0])
            tt[r, at + sep + 1:at + n] = 1
            chosen = torch.rand(n, generator=g) < 0.2
            chosen[1] = True
            labels[r, at:at + n] = torch.where(chosen, torch.randint(5, cfg.vocab_size, (n,), generator=g), -100)
            sentence[r, at] = int(torch.randint(0, 2, (1,), generator=g))
            at += n
    return {"input_ids": ids, "token_type_ids": tt, "attention_mask": mask, "position_ids": pos, "labels": labels,
            "sentence_label": sentence}


def single_batch(batch: dict, row: int, start: int, length: int, seq: int) -> dict:
    """Example (row, start, length) of a packed batch alone in a one-row unpacked batch of `seq`."""
    out = {}
    for key in ("input_ids", "token_type_ids", "attention_mask", "labels"):
        fill = -100 if key == "labels" else 0
        v = torch.full((1, seq), fill, dtype=torch.long)
        v[0, :length] = batch[key][row, start:start + length]
        out[key] = v
    out["sentence_label"] = batch["sentence_label"][row, start:start + 1]
    return out


def run_packed(model, batch, **kw):
    return model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], batch.get("labels"),
                 position_ids=batch["position_ids"], **kw)


def objective_batch(cfg: ModelConfig) -> dict:
    """Three packed rows of six examples with the loader's layout fields and no sentence labels:
    the batch the objective tests (ELECTRA, distillation) train on."""
    from pretrain.model.layout import batch_layout

    exs = example_ids(cfg, [5, 7, 3, 9, 6, 16])
    batch = packed_batch(cfg, [exs[:3], exs[3:5], exs[5:]], 16)
    batch.pop("sentence_label")
    batch.update(batch_layout(batch["attention_mask"], batch["position_ids"], batch["labels"]))
    return batch
