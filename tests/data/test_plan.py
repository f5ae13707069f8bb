"""Epoch plans and re-splitting, checked on document positions without reading shards."""
import collections

import numpy as np
import pytest

from pretrain.data.plan import WorkItem, epoch_plan, resplit
from pretrain.data.shards import ShardList


def docs_of(item: WorkItem, counts: dict) -> list:
    return [(item.url, p) for p in range(item.first, counts[item.url], item.stride)]


def shards(n, docs=10):
    urls = tuple(f"s{i}.tar" for i in range(n))
    return ShardList(urls, tuple([docs] * n)), {u: docs for u in urls}


@pytest.mark.parametrize("n_shards,n_streams", [(6, 4), (6, 6), (2, 5), (1, 7), (3, 9), (10, 3)])
def test_plan_covers_every_document_once_and_every_stream_works(n_shards, n_streams):
    sl, counts = shards(n_shards)
    plan = epoch_plan(sl, 1, 0, n_streams)
    seen = collections.Counter(d for items in plan for it in items for d in docs_of(it, counts))
    assert set(seen.values()) == {1} and len(seen) == n_shards * 10
    assert all(plan), "every stream gets work"
    assert epoch_plan(sl, 1, 0, n_streams) == plan
    if n_shards > 2:
        assert epoch_plan(sl, 1, 1, n_streams) != plan


def simulate(states, counts, rng, epochs_ahead=0):
    """Consume a random prefix of each stream's items (documents only); return (states, consumed)."""
    consumed, out = [], []
    for st in states:
        items = [WorkItem.from_json(x) for x in st["items"]]
        docs = [d + (it.epoch,) for it in items for d in docs_of(it, counts)]
        k = int(rng.integers(0, len(docs) + 1))
        consumed += docs[:k]
        rest = [WorkItem(u, p, 10**6, 0, e) for (u, p, e) in docs[k:]]  # one item per remaining doc
        out.append({"items": [i.to_json() for i in rest], "next_epoch": st["next_epoch"]})
    return out, consumed


@pytest.mark.parametrize("n_old,n_new", [(4, 1), (4, 3), (2, 6), (3, 2)])
def test_resplit_loses_and_repeats_nothing(n_old, n_new):
    sl, counts = shards(5)
    rng = np.random.default_rng(0)
    plan0 = epoch_plan(sl, 7, 0, n_old)
    # stream 0 already finished epoch 0 and started epoch 1; the others are in epoch 0
    states = [{"items": [i.to_json() for i in plan0[s]], "next_epoch": 1} for s in range(n_old)]
    states[0] = {"items": [i.to_json() for i in epoch_plan(sl, 7, 1, n_old)[0]], "next_epoch": 2}
    before = [d + (0,) for it in plan0[0] for d in docs_of(it, counts)]
    states, consumed = simulate(states, counts, rng)
    new = resplit(states, sl, 7, n_new)
    assert len(new) == n_new and all(s["next_epoch"] == 2 for s in new)
    after = [d + (it.epoch,) for s in new for it in map(WorkItem.from_json, s["items"]) for d in docs_of(it, counts)]
    for epoch in (0, 1):
        got = collections.Counter(d for d in before + consumed + after if d[2] == epoch)
        assert set(got.values()) == {1} and len(got) == 50, epoch


def test_resplit_twice_still_exactly_once():
    sl, counts = shards(4)
    rng = np.random.default_rng(1)
    states = [{"items": [i.to_json() for i in items], "next_epoch": 1} for items in epoch_plan(sl, 3, 0, 3)]
    states, consumed1 = simulate(states, counts, rng)
    states, consumed2 = simulate(resplit(states, sl, 3, 5), counts, rng)
    final = resplit(states, sl, 3, 2)
    after = [d + (it.epoch,) for s in final for it in map(WorkItem.from_json, s["items"]) for d in docs_of(it, counts)]
    got = collections.Counter(consumed1 + consumed2 + after)
    assert set(got.values()) == {1} and len(got) == 40
