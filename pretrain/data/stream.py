"""One stream: work items -> documents (webdataset) -> examples -> rows -> masked batches + cursor.

A stream is the unit of the data cursor (see plan.py). It yields batches of exactly
``batch_size`` rows (one example each, or several with packing; a finite stream also yields its
partial last batch); every batch carries ``_state``, the stream's position *after* that batch, as
plain JSON-able data: ``{"stream": global index, "items": [remaining work items], "next_epoch":
int}`` where the first item has been advanced to the first example not yet emitted (``skip`` =
the examples of its document before it) and, with packing, items list the examples read past
that point and already emitted (``exclude``). A
stream that has read all its items plans its next epoch itself (infinite mode), so streams
never wait for each other. ``_stats`` carries the example-building counters since the previous
batch, so only consumed batches are counted by the loader.
"""
from __future__ import annotations

import re
import tarfile
from collections import deque
from dataclasses import dataclass, replace
from typing import Iterator, Optional

import torch
import webdataset as wds

from pretrain.data.config import ObjectiveConfig
from pretrain.data.errors import DataError
from pretrain.data.examples import ExampleStats, build_examples
from pretrain.data.masking import Masker
from pretrain.data.packing import Packer
from pretrain.data.plan import WHOLE, WorkItem, epoch_plan, resplit
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
    with_ids: bool = False            # add debug keys doc_id / example_index / epoch (per example)
    packing: bool = False             # several examples per row (pretrain/data/packing.py)
    pack_lookahead: int = 1           # examples the packer holds when packing (data.pack_lookahead)

    # What the loader asks of any spec (this one, or a mixture's: pretrain/data/mixture.py).
    def fresh_state(self) -> dict:
        return fresh_state()

    def open(self, index: int, n_streams: int, state: dict) -> "Stream":
        return Stream(self, index, n_streams, state)

    def fingerprint(self) -> str:
        return self.shards.fingerprint()

    def resplit(self, streams: list, seed: int, n_new: int) -> list:
        return resplit(streams, self.shards, seed, n_new)

    def epochs_of(self, state: dict) -> dict:
        return {"data": int(state["next_epoch"])}


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
    """One reader: work items -> documents -> examples -> packer -> rows -> batches.

    The cursor (`_state`) is the position of the first example not yet emitted (the packer's
    oldest; without packing, the example after the last one emitted) plus, per work item, the
    examples read past that position and already emitted (`WorkItem.exclude`). Items the packer
    still holds examples of are kept (`_done`) until those examples leave it.
    """

    def __init__(self, spec: StreamSpec, index: int, n_streams: int, state: dict):
        self.spec, self.index, self.n_streams = spec, index, n_streams
        self.items = deque(WorkItem.from_json(x) for x in state["items"])
        self.next_epoch = int(state["next_epoch"])
        self.masker = Masker(spec.table, spec.objective, spec.seed, spec.max_seq_len)
        self.packer = Packer(spec.max_seq_len, spec.pack_lookahead if spec.packing else 1)
        self._seq = 0                     # sequence number of self.items[0]
        self._done: deque = deque()       # (seq, item) read to the end, examples still in the packer
        self._emitted: set = set()        # refs emitted that lie after the packer's oldest
        self._last: Optional[tuple] = None   # ref of the last example read
        self.stats = ExampleStats()

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

    # ---------------------------------------------------------------- reading
    def _read(self) -> Iterator[tuple]:
        """(example, ref) in reading order; ref = (item seq, document position, example index)."""
        spec, obj = self.spec, self.spec.objective
        whole = spec.packing and obj.sentence_task == "none"
        idle_items = 0   # consecutive work items without a single example (guards an endless loop)
        while True:
            if not self.items:
                if not self._plan_next_epoch():
                    return
                if not self.items:
                    continue
            item, seq = self.items[0], self._seq
            excluded = set(item.exclude)
            dropped = {p for p, i in item.exclude if i == WHOLE}   # documents a phase boundary counted as read
            produced = 0
            for pos, doc, other in read_item(item):
                if pos in dropped:
                    continue
                exs = build_examples(doc, other, spec.max_seq_len, spec.short_seq_prob, obj.sentence_task,
                                     spec.seed, item.epoch, self.stats, whole_documents=whole)
                skip = item.skip if pos == item.first else 0
                for ex in exs[skip:]:
                    produced += 1
                    if (pos, ex.index) in excluded:
                        continue
                    self._last = (seq, pos, ex.index)
                    yield ex, self._last
            self.items.popleft()
            self._seq += 1
            self._done.append((seq, item))
            self._forget()
            idle_items = 0 if produced else idle_items + 1
            if idle_items > 2 * self.n_streams + len(spec.shards.urls) and spec.epochs is None:
                raise DataError(f"stream {self.index} of {self.n_streams} read many work items without "
                                f"a single example; are the shards {spec.shards.urls[0]}... empty?")

    def _forget(self) -> None:
        """Drop what the cursor no longer needs: emitted refs and finished items before the oldest."""
        oldest = self.packer.oldest_ref()
        if oldest is None:
            self._emitted.clear()
            self._done.clear()
            return
        self._emitted = {r for r in self._emitted if r > oldest}
        while self._done and self._done[0][0] < oldest[0]:
            self._done.popleft()

    # ---------------------------------------------------------------- the cursor
    def _state(self) -> dict:
        """The stream's position after the rows emitted so far (module docstring)."""
        oldest = self.packer.oldest_ref()
        if oldest is None:   # everything read was emitted: resume after the last example read
            if self._last is None:
                return {"stream": self.index, "items": [i.to_json() for i in self.items],
                        "next_epoch": self.next_epoch}
            seq, pos, index = self._last
            at = (seq, pos, index + 1)
        else:
            at = oldest
        entries = [(s, it) for s, it in self._done if s >= at[0]]
        entries += [(self._seq + k, it) for k, it in enumerate(self.items)]
        emitted: dict = {}
        for s, pos, index in self._emitted:
            emitted.setdefault(s, set()).add((pos, index))
        out = []
        for s, it in entries:
            exclude = set(it.exclude) | emitted.get(s, set())
            if s == at[0]:
                _, pos, skip = at
                exclude = {e for e in exclude if e >= (pos, skip)}
                it = WorkItem(it.url, pos, it.stride, skip, it.epoch, it.prev or pos != it.first)
            out.append(replace(it, exclude=tuple(sorted(exclude))).to_json())
        return {"stream": self.index, "items": out, "next_epoch": self.next_epoch}

    # ---------------------------------------------------------------- batches
    def _row(self) -> list:
        row, refs = self.packer.pop_row()
        if self.packer.lookahead > 1:
            self._emitted.update(refs)
            self._forget()
        return row

    def _batch(self, rows: list, state: dict) -> dict:
        batch = self.masker.collate(rows)
        if self.spec.with_ids:
            examples = [e for row in rows for e in row]
            batch["doc_id"] = torch.tensor([e.doc_id for e in examples], dtype=torch.int64)
            batch["example_index"] = torch.tensor([e.index for e in examples], dtype=torch.int64)
            batch["epoch"] = torch.tensor([e.epoch for e in examples], dtype=torch.int64)
        batch["_state"] = state
        batch["_stats"] = self.stats.as_dict()
        self.stats = ExampleStats()
        return batch

    def __iter__(self) -> Iterator[dict]:
        size = self.spec.batch_size
        rows: list = []
        for ex, ref in self._read():
            self.packer.add(ex, ref)
            while self.packer.ready():
                rows.append(self._row())
                if len(rows) == size:
                    yield self._batch(rows, self._state())
                    rows = []
        # A finite stream: what the packer still holds, then the partial last batch.
        while len(self.packer):
            rows.append(self._row())
            if len(rows) == size and len(self.packer):
                yield self._batch(rows, self._state())
                rows = []
        if rows:
            yield self._batch(rows, {"stream": self.index, "items": [], "next_epoch": self.next_epoch})
