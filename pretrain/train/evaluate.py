"""Held-out evaluation: masked-LM accuracy (the MLPerf BERT metric), SOP accuracy, loss."""
from __future__ import annotations

import itertools
from typing import Callable, Optional

from parallel.topology import reduce_sum

_KEYS = ("mlm_loss_sum", "mlm_correct", "mlm_count", "sentence_loss_sum", "sentence_correct", "sentence_count")


def evaluate(engine, loader_factory: Callable, max_batches: Optional[int]) -> dict[str, float]:
    """One pass (or `max_batches` per rank) over the validation split; sums are all-reduced.

    Ranks may hold different numbers of validation batches, but under ZeRO-3 every forward is
    collective: a rank that ran out keeps stepping on its last batch (stats discarded) until
    all ranks are done, so nobody waits forever.
    """
    loader = loader_factory()
    totals = dict.fromkeys(_KEYS, 0.0)
    batches = iter(loader) if max_batches is None else itertools.islice(loader, max_batches)
    last = None
    while True:
        batch = next(batches, None)
        active = reduce_sum([float(batch is not None)])[0]
        if active == 0:
            break
        if batch is None and last is None:
            last = _placeholder_batch()
        stats = engine.eval_step(batch if batch is not None else last)
        if batch is not None:
            last = batch
            for k in _KEYS:
                totals[k] += float(stats.get(k, 0.0))
    summed = reduce_sum([totals[k] for k in _KEYS])
    totals = dict(zip(_KEYS, summed))
    mlm_count = max(totals["mlm_count"], 1.0)
    out = {
        "eval/mlm_loss": totals["mlm_loss_sum"] / mlm_count,
        "eval/mlm_acc": totals["mlm_correct"] / mlm_count,
        "eval/masked_tokens": totals["mlm_count"],
    }
    loss = out["eval/mlm_loss"]
    if totals["sentence_count"]:
        out["eval/sop_loss"] = totals["sentence_loss_sum"] / totals["sentence_count"]
        out["eval/sop_acc"] = totals["sentence_correct"] / totals["sentence_count"]
        loss += out["eval/sop_loss"]
    out["eval/loss"] = loss
    return out


def _placeholder_batch() -> dict:
    import torch

    """A one-sequence batch with nothing to predict, for a rank with no validation data at all."""
    ids = torch.zeros(1, 8, dtype=torch.long)
    mask = torch.zeros_like(ids)
    mask[:, 0] = 1
    return {
        "input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask,
        "labels": torch.full_like(ids, -100), "sentence_label": torch.full((1,), -100, dtype=torch.long),
    }
