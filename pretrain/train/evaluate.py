"""Held-out evaluation: the objective's metrics (e.g. masked-LM accuracy, the MLPerf BERT metric)
over the validation split, exact over all ranks (sums reduced before dividing), and eval/loss.
A mixture is evaluated per source (eval/<source>/<metric>) and overall (eval/<metric>: the
sources' sums together, so each source counts by its validation size)."""
from __future__ import annotations

import itertools
from typing import Callable, Mapping, Optional, Union

from parallel.topology import reduce_sum


def evaluate(engine, objective, loader_factories: Union[Callable, Mapping[str, Callable]],
             max_batches: Optional[int]) -> dict[str, float]:
    """`loader_factories`: one factory (one source), or {source name: factory} (a mixture);
    `max_batches` per rank and source."""
    if callable(loader_factories):
        return objective.evaluation(_totals(engine, objective, loader_factories, max_batches))
    keys = objective.stat_keys
    overall = dict.fromkeys(keys, 0.0)
    out: dict[str, float] = {}
    for name, factory in loader_factories.items():
        totals = _totals(engine, objective, factory, max_batches)
        for k in keys:
            overall[k] += totals[k]
        out.update({f"eval/{name}/{k.split('/', 1)[1]}": v for k, v in objective.evaluation(totals).items()})
    out.update(objective.evaluation(overall))
    return out


def _totals(engine, objective, loader_factory: Callable, max_batches: Optional[int]) -> dict[str, float]:
    """One pass (or `max_batches` per rank) over the validation split; sums are all-reduced.

    Ranks may hold different numbers of validation batches, but under ZeRO-3 every forward is
    collective: a rank that ran out keeps stepping on its last batch (stats discarded) until
    all ranks are done, so nobody waits forever.
    """
    keys = objective.stat_keys
    loader = loader_factory()
    totals = dict.fromkeys(keys, 0.0)
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
            for k in keys:
                totals[k] += float(stats.get(k, 0.0))
    summed = reduce_sum([totals[k] for k in keys])
    return dict(zip(keys, summed))


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
