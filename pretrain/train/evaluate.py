"""Held-out evaluation: masked-LM accuracy (the MLPerf BERT metric), SOP accuracy, loss."""
from __future__ import annotations

import itertools
from typing import Callable, Optional

from parallel import collectives

_KEYS = ("mlm_loss_sum", "mlm_correct", "mlm_count", "sentence_loss_sum", "sentence_correct", "sentence_count")


def evaluate(engine, loader_factory: Callable, max_batches: Optional[int]) -> dict[str, float]:
    """One pass (or `max_batches` per rank) over the validation split; sums are all-reduced."""
    loader = loader_factory()
    totals = dict.fromkeys(_KEYS, 0.0)
    batches = iter(loader) if max_batches is None else itertools.islice(loader, max_batches)
    for batch in batches:
        stats = engine.eval_step(batch)
        for k in _KEYS:
            totals[k] += float(stats.get(k, 0.0))
    summed = collectives.all_reduce_sum([totals[k] for k in _KEYS])
    totals = dict(zip(_KEYS, (float(v) for v in summed)))
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
