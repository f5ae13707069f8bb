"""Epoch plans: which documents each stream reads, as a pure function of its inputs.

A *stream* is one (rank, loader worker) reader; a rank has ``max(1, num_workers)`` of them and
stream index = ``rank * W + worker``. A stream reads an ordered list of *work items*; an item is
a strided slice of one shard: documents ``first, first+stride, ...`` (positions inside the tar),
skipping the first ``skip`` examples of the first document (how a cursor resumes mid-document).
Each item carries the epoch it belongs to (examples and masks are seeded by (seed, epoch, doc
id)) and ``prev``: whether the document at ``first - stride`` belongs to the item too (NSP takes
its random B from that previous document, so a resumed item re-reads it and stays exact).

Plan of epoch e over n streams: shuffle the shards with (seed, e) and deal them round-robin. With
fewer shards than streams every shard is cut into m = ceil(n / shards) strided pieces (first k,
stride m) that are dealt instead, so every stream gets work and no document is read twice.
A cursor taken with one layout is re-split for another with the same `deal` (see `resplit`).
With packing an item may also list examples to leave out (`exclude`): emitted before the cursor
was taken although read after its position; they stay excluded through any re-split. An
exclusion with example index -1 leaves out the whole document (`cut_to_documents`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from pretrain.data.shards import ShardList

PURPOSE_PLAN = 1


@dataclass(frozen=True)
class WorkItem:
    url: str
    first: int
    stride: int
    skip: int
    epoch: int
    prev: bool = False
    # (document position, example index) pairs already emitted: with packing, examples leave the
    # packer out of reading order, so a cursor names the ones read past its position and emitted.
    exclude: tuple = ()

    def to_json(self) -> list:
        out = [self.url, self.first, self.stride, self.skip, self.epoch, self.prev]
        return out + [[list(e) for e in self.exclude]] if self.exclude else out

    @classmethod
    def from_json(cls, x: Sequence) -> "WorkItem":
        url, first, stride, skip, epoch, prev = x[:6]
        exclude = tuple(sorted((int(p), int(i)) for p, i in x[6])) if len(x) > 6 else ()
        return cls(str(url), int(first), int(stride), int(skip), int(epoch), bool(prev), exclude)

    def covers(self, pos: int) -> bool:
        """Whether the document at `pos` of the shard is one of this item's."""
        return pos >= self.first and (pos - self.first) % self.stride == 0


WHOLE = -1   # an `exclude` entry's example index that leaves out the whole document


def cut_to_documents(state: dict) -> tuple[dict, int]:
    """A stream state whose position no longer depends on how documents are cut into examples
    (a training phase that changes max_seq_len): a document the stream has started, or emitted
    any example of, counts as read; the rest of the stream is unchanged. Returns the new state
    and how many documents were cut short (their unread examples are not trained on this epoch;
    repeating their read part instead would train on it twice)."""
    items = [WorkItem.from_json(x) for x in state["items"]]
    cut = 0
    out = []
    for k, item in enumerate(items):
        started = {p for p, _ in item.exclude}
        if k == 0 and item.skip > 0:
            started.add(item.first)
        cut += len(started)
        exclude = tuple(sorted((p, WHOLE) for p in started))
        out.append(replace(item, skip=0, exclude=exclude).to_json())
    return {**state, "items": out}, cut


def split_item(item: WorkItem, m: int) -> list[WorkItem]:
    """Cut an item into m strided pieces that together cover exactly its documents."""
    if m <= 1:
        return [item]
    pieces = [WorkItem(item.url, item.first + k * item.stride, item.stride * m,
                       item.skip if k == 0 else 0, item.epoch, False) for k in range(m)]
    return [replace(p, exclude=tuple(e for e in item.exclude if p.covers(e[0]))) for p in pieces]


def _nonempty(item: WorkItem, counts: dict) -> bool:
    n = counts.get(item.url)
    return n is None or item.first < n


def deal(items: Sequence[WorkItem], n_streams: int, counts: Optional[dict] = None) -> list[list[WorkItem]]:
    """Distribute items over streams in order; split them when there are fewer items than streams."""
    counts = counts or {}
    out: list[list[WorkItem]] = [[] for _ in range(n_streams)]
    items = [i for i in items if _nonempty(i, counts)]
    if not items:
        return out
    if len(items) < n_streams:
        m = math.ceil(n_streams / len(items))
        items = [p for i in items for p in split_item(i, m) if _nonempty(p, counts)]
    for k, item in enumerate(items):
        out[k % n_streams].append(item)
    return out


def shard_order(seed: int, epoch: int, n_shards: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64([seed, epoch, PURPOSE_PLAN]))
    return rng.permutation(n_shards)


def epoch_plan(shards: ShardList, seed: int, epoch: int, n_streams: int) -> list[list[WorkItem]]:
    """Work items of every stream for one epoch (pure function of its arguments)."""
    order = shard_order(seed, epoch, len(shards.urls))
    items = [WorkItem(shards.urls[i], 0, 1, 0, epoch) for i in order]
    return deal(items, n_streams, dict(zip(shards.urls, shards.documents)))


def resplit(states: Sequence[dict], shards: ShardList, seed: int, n_new: int) -> list[dict]:
    """Stream states for a new layout from the old layout's states (no document lost or repeated).

    Old streams run epochs independently, so they may be at different epochs. Let E be the latest
    epoch any old stream has started. Everything the old layout still owed for epochs <= E (each
    stream's remaining items plus its whole plan for the epochs it has not started yet) is dealt,
    epoch by epoch, over the new streams; afterwards the new streams follow fresh plans from E+1.
    """
    n_old = len(states)
    current = [int(s["next_epoch"]) - 1 for s in states]
    last = max(current)
    owed: dict[int, list[WorkItem]] = {}
    plans = {e: epoch_plan(shards, seed, e, n_old) for e in range(min(current) + 1, last + 1)}
    for idx, st in enumerate(states):
        for raw in st["items"]:
            it = WorkItem.from_json(raw)
            owed.setdefault(it.epoch, []).append(replace(it, prev=False))
        for e in range(current[idx] + 1, last + 1):
            owed.setdefault(e, []).extend(plans[e][idx])
    counts = dict(zip(shards.urls, shards.documents))
    new_items: list[list[WorkItem]] = [[] for _ in range(n_new)]
    for e in sorted(owed):
        for j, got in enumerate(deal(owed[e], n_new, counts)):
            new_items[j].extend(got)
    return [{"items": [i.to_json() for i in items], "next_epoch": last + 1} for items in new_items]
