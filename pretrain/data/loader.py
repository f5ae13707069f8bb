"""`ResumableLoader`: torch DataLoader over this rank's streams, with a cursor of consumed batches.

Each DataLoader worker runs one stream and batches inside the worker (``batch_size=None``).
torch hands out batches round-robin over workers starting at worker 0, so after a restore the
worker -> stream mapping is rotated to make the stream whose batch was next come first; with
that, a restored run yields exactly the batches the interrupted run would have yielded.

The cursor of a rank (`state_dict`) holds, per stream, the state carried by the last batch the
trainer *received* (prefetched batches are not counted) and which stream yields next. The
trainer gathers the per-rank dicts (``all_gather_object``), merges them with `merge_cursors`
into one JSON-able global cursor stored in the checkpoint, and hands that to
`load_state_dict` on every rank. Same world size and workers per rank: exact continuation.
Otherwise the remaining work is re-split (plan.resplit) over the new streams.
"""
from __future__ import annotations

import copy
from collections import Counter
from typing import Callable, Iterator, Optional, Sequence, Union

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pretrain.data.errors import DataError
from pretrain.data.mixture import MixtureSpec
from pretrain.data.plan import cut_to_documents
from pretrain.data.stream import StreamSpec
from pretrain.model.layout import batch_examples

CURSOR_VERSION = 1


class _RankStreams(IterableDataset):
    """The dataset each DataLoader worker iterates: worker w runs local stream (w + rotation) % W."""

    def __init__(self, spec, rank: int, n_local: int, n_streams: int, states: list, rotation: int):
        self.spec, self.rank, self.n_local, self.n_streams = spec, rank, n_local, n_streams
        self.states, self.rotation = states, rotation

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        local = (worker + self.rotation) % self.n_local
        index = self.rank * self.n_local + local
        return iter(self.spec.open(index, self.n_streams, self.states[local]))


class ResumableLoader:
    """Iterate to get batches (dicts of int64 tensors); `state_dict` / `load_state_dict` for resume.

    Infinite (training, ``spec.epochs=None``): every ``iter()`` continues from the last consumed
    batch. Finite (eval): every ``iter()`` is a fresh pass, unless a cursor was loaded since.
    """

    def __init__(self, spec: Union[StreamSpec, MixtureSpec], rank: int, world_size: int, num_workers: int,
                 prefetch_factor: int = 2, pin_memory: bool = False,
                 on_epoch: Optional[Callable[[str, int], None]] = None):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} outside world_size {world_size}")
        self.spec, self.rank, self.world_size = spec, rank, world_size
        self.num_workers = num_workers
        self.n_local = max(1, num_workers)
        self.n_streams = world_size * self.n_local
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self._states = [spec.fresh_state() for _ in range(self.n_local)]
        self._next = 0
        self._loaded = False
        self.stats: Counter = Counter()   # example-building counters + batches/samples/tokens consumed
        # A mixture's batches carry `source` (index into these names); on_epoch(source, epoch) is
        # called when this rank first sees a source's stream start epoch >= 1.
        self.source_names = tuple(spec.names) if isinstance(spec, MixtureSpec) else None
        self.on_epoch = on_epoch
        self._epochs = self._started()

    # ---- iteration -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        if self.spec.epochs is not None and not self._loaded:
            self._states, self._next = [self.spec.fresh_state() for _ in range(self.n_local)], 0
        self._loaded = False
        dataset = _RankStreams(self.spec, self.rank, self.n_local, self.n_streams,
                               copy.deepcopy(self._states), self._next)
        kwargs = {}
        if self.num_workers > 0:
            kwargs = {"prefetch_factor": self.prefetch_factor, "persistent_workers": False}
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                            **kwargs)
        for batch in _one_line_errors(loader):
            state = batch.pop("_state")
            local = state.pop("stream") - self.rank * self.n_local
            self._states[local] = state
            self._next = (local + 1) % self.n_local
            self.stats.update(batch.pop("_stats"))
            counts = {"batches": 1, "samples": batch_examples(batch), "rows": int(batch["input_ids"].shape[0]),
                      "tokens": int(batch["attention_mask"].sum()),
                      "masked_tokens": int((batch["labels"] != -100).sum())}
            self.stats.update(counts)
            if self.source_names is not None:
                name = self.source_names[batch["source"]]
                self.stats.update({f"source/{name}/{k}": v for k, v in counts.items()})
                self._note_epochs(state)
            yield batch

    def _started(self) -> dict:
        """Per source, the latest epoch any of this rank's streams has started (-1: none yet)."""
        out: dict = {}
        for st in self._states:
            for name, nxt in self.spec.epochs_of(st).items():
                out[name] = max(out.get(name, -1), nxt - 1)
        return out

    def _note_epochs(self, state: dict) -> None:
        for name, nxt in self.spec.epochs_of(state).items():
            if nxt - 1 > self._epochs.get(name, -1):
                self._epochs[name] = nxt - 1
                if nxt - 1 >= 1 and self.on_epoch is not None:
                    self.on_epoch(name, nxt - 1)

    # ---- cursor ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """This rank's cursor (JSON-able). Merge all ranks' with `merge_cursors`."""
        return {
            "version": CURSOR_VERSION,
            "rank": self.rank,
            "world_size": self.world_size,
            "streams_per_rank": self.n_local,
            "seed": self.spec.seed,
            "shards": self.spec.fingerprint(),
            "next_stream": self._next,
            "streams": copy.deepcopy(self._states),
        }

    def load_state_dict(self, cursor: dict) -> None:
        """Continue from a global cursor (from `merge_cursors`), any world size / worker count."""
        if not isinstance(cursor, dict) or cursor.get("version") != CURSOR_VERSION or "streams" not in cursor:
            raise DataError(f"data cursor is not a merged cursor of version {CURSOR_VERSION} (got keys "
                            f"{sorted(cursor) if isinstance(cursor, dict) else type(cursor).__name__})")
        if cursor["shards"] != self.spec.fingerprint():
            raise DataError("data cursor was saved for a different shard list (data.path / train_urls / the names "
                            "and shards of data.sources changed); start the data fresh or restore the original shards")
        same = cursor["world_size"] == self.world_size and cursor["streams_per_rank"] == self.n_local
        if same:
            lo = self.rank * self.n_local
            self._states = copy.deepcopy(cursor["streams"][lo:lo + self.n_local])
            self._next = int(cursor["next_stream"][self.rank])
        else:
            new = self.spec.resplit(cursor["streams"], int(cursor["seed"]), self.n_streams)
            lo = self.rank * self.n_local
            self._states = new[lo:lo + self.n_local]
            self._next = 0
        self._loaded = True
        self._epochs = self._started()


def _one_line_errors(loader) -> Iterator[dict]:
    """torch re-raises a worker's exception with the worker traceback in its message; keep the
    user-facing DataError one line (the original message is the traceback's last line)."""
    try:
        yield from loader
    except DataError as e:
        lines = str(e).strip().splitlines()
        if len(lines) <= 1:
            raise
        raise DataError(lines[-1].split("DataError: ", 1)[-1]) from None


def cut_cursor(cursor: dict) -> tuple[dict, int]:
    """A merged cursor moved to whole documents (plan.cut_to_documents, every stream and source):
    what a training phase that changes how documents are cut into examples resumes from.
    Returns the cursor and the number of documents cut short."""
    streams, cut = [], 0
    for st in cursor["streams"]:
        if "sources" in st:
            subs = {}
            for name, sub in st["sources"].items():
                subs[name], n = cut_to_documents(sub)
                cut += n
            streams.append({**st, "sources": subs})
        else:
            new, n = cut_to_documents(st)
            cut += n
            streams.append(new)
    return {**cursor, "streams": streams}, cut


def merge_cursors(rank_states: Sequence[dict]) -> dict:
    """All ranks' `state_dict()`s (any order) -> the global cursor to store in the checkpoint."""
    states = sorted(rank_states, key=lambda s: s["rank"])
    world = states[0]["world_size"]
    if [s["rank"] for s in states] != list(range(world)):
        raise DataError(f"merge_cursors needs one state per rank 0..{world - 1}, got ranks {[s['rank'] for s in states]}")
    for key in ("version", "world_size", "streams_per_rank", "seed", "shards"):
        if len({repr(s[key]) for s in states}) != 1:
            raise DataError(f"rank cursors disagree on {key!r}")
    first = states[0]
    return {
        "version": first["version"],
        "world_size": world,
        "streams_per_rank": first["streams_per_rank"],
        "seed": first["seed"],
        "shards": first["shards"],
        "next_stream": [s["next_stream"] for s in states],
        "streams": [st for s in states for st in s["streams"]],
    }
