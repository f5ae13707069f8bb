"""One stream: work items -> documents (webdataset) -> examples -> masked batches + cursor state.

A stream is the unit of the data cursor (see plan.py). It yields batches of exactly
``batch_size`` examples (a finite stream also yields its partial last batch); every batch
carries ``_state``, the stream's position *after* that batch, as plain JSON-able data:
``{"stream": global index, "items": [remaining work items], "next_epoch": int}`` where the first
item has been advanced to the document being read and the examples of it already emitted. A
stream that has read all its items plans its next epoch itself (infinite mode), so streams
never wait for each other. ``_stats`` carries the example-building counters since the previous
batch, so only consumed batches are counted by the loader.
"""
from __future__ import annotations

import re
import tarfile
from collections import deque
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import webdataset as wds

from pretrain.data.config import ObjectiveConfig
from pretrain.data.errors import DataError
from pretrain.data.examples import ExampleStats, build_examples
from pretrain.data.masking import Masker
from pretrain.data.plan import WorkItem, epoch_plan
from pretrain.data.shards import ShardList
from pretrain.data.tokens import TokenTable
from pretrain.shardformat import decode_document


@dataclass(frozen=True)
class StreamSpec:
    """Everything a worker needs to run any stream (picklable, shared by all streams)."""
    shards: ShardList
    table: TokenTable
    objective: ObjectiveConfig
    seed: int
    max_seq_len: int
    batch_size: int
    short_seq_prob: float
    epochs: Optional[int] = None      # None = infinite (training); k = stop after epoch k-1
    with_ids: bool = False            # add debug keys doc_id / example_index to batches


def fresh_state() -> dict:
    return {"items": [], "next_epoch": 0}


def read_item(item: WorkItem) -> Iterator[tuple[int, object, object]]:
    """(position, document, other document) for each document of the item, in order.

    `other` is the previous document of the item, or for the item's first document the next
    one (None for a one-document item); an advanced item (prev=True) re-reads its previous
    document so the pairing matches an uninterrupted run.
    """
    start = item.first - item.stride if item.prev else item.first
    prev_doc = pending = None
    pending_pos = -1
    try:
        samples = wds.tarfile_samples([{"url": item.url}])
        for pos, sample in enumerate(samples):
            if pos < start or (pos - start) % item.stride:
                continue
            doc = decode_document(sample)
            if pos < item.first:
                prev_doc = doc
                continue
            if prev_doc is None and pending is None:
                pending, pending_pos = doc, pos
                continue
            if pending is not None:
                yield pending_pos, pending, doc
                prev_doc, pending = pending, None
            yield pos, doc, prev_doc
            prev_doc = doc
    except (OSError, ValueError, tarfile.TarError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot read shard {item.url}: {_reason(e)}") from None
    if pending is not None:
        yield pending_pos, pending, None


def _reason(e: BaseException) -> str:
    detail = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    status = re.search(r"\): exit (-?\d+)", detail)
    if status:  # webdataset's pipe: error carries the command's exit status
        return f"command exited with status {status.group(1)}"
    return (detail.splitlines() or [type(e).__name__])[0]


class Stream:
    def __init__(self, spec: StreamSpec, index: int, n_streams: int, state: dict):
        self.spec, self.index, self.n_streams = spec, index, n_streams
        self.items = deque(WorkItem.from_json(x) for x in state["items"])
        self.next_epoch = int(state["next_epoch"])
        self.masker = Masker(spec.table, spec.objective, spec.seed, spec.max_seq_len)

    def _plan_next_epoch(self) -> bool:
        spec = self.spec
        if spec.epochs is not None and self.next_epoch >= spec.epochs:
            return False
        plan = epoch_plan(spec.shards, spec.seed, self.next_epoch, self.n_streams)[self.index]
        if not plan and spec.epochs is None:
            raise DataError(
                f"stream {self.index} of {self.n_streams} gets no documents: the data has fewer documents "
                f"than world_size x num_workers; use fewer workers/ranks or more data"
            )
        self.items.extend(plan)
        self.next_epoch += 1
        return True

    def _state(self, item: WorkItem, pos: int, done: int) -> dict:
        head = WorkItem(item.url, pos, item.stride, done, item.epoch, item.prev or pos != item.first)
        rest = list(self.items)[1:]
        return {"stream": self.index, "items": [head.to_json()] + [i.to_json() for i in rest],
                "next_epoch": self.next_epoch}

    def _batch(self, buf, state, stats: ExampleStats) -> dict:
        batch = self.masker.collate(buf)
        if self.spec.with_ids:
            batch["doc_id"] = torch.tensor([e.doc_id for e in buf], dtype=torch.int64)
            batch["example_index"] = torch.tensor([e.index for e in buf], dtype=torch.int64)
            batch["epoch"] = torch.tensor([e.epoch for e in buf], dtype=torch.int64)
        batch["_state"] = state
        batch["_stats"] = stats.as_dict()
        return batch

    def __iter__(self) -> Iterator[dict]:
        spec, obj = self.spec, self.spec.objective
        buf: list = []
        stats = ExampleStats()
        idle_items = 0   # consecutive work items without a single example (guards an endless loop)
        while True:
            if not self.items:
                if not self._plan_next_epoch():
                    break
                if not self.items:
                    continue
            item = self.items[0]
            produced = 0
            for pos, doc, other in read_item(item):
                exs = build_examples(doc, other, spec.max_seq_len, spec.short_seq_prob,
                                     obj.sentence_task, spec.seed, item.epoch, stats)
                skip = item.skip if pos == item.first else 0
                for ex in exs[skip:]:
                    buf.append(ex)
                    produced += 1
                    if len(buf) == spec.batch_size:
                        yield self._batch(buf, self._state(item, pos, ex.index + 1), stats)
                        buf, stats = [], ExampleStats()
            self.items.popleft()
            idle_items = 0 if produced else idle_items + 1
            if idle_items > 2 * self.n_streams + len(spec.shards.urls) and spec.epochs is None:
                raise DataError(f"stream {self.index} of {self.n_streams} read many work items without "
                                f"a single example; are the shards {spec.shards.urls[0]}... empty?")
        if buf:
            yield self._batch(buf, {"stream": self.index, "items": [], "next_epoch": self.next_epoch}, stats)
