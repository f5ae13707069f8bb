"""Mixtures: one stream per (rank, worker) that reads several sources at chosen weights.

Every stream of a mixture holds one ordinary `Stream` per source (its own shards, plan, epochs
and cursor) and takes each batch whole from one source. Which one is a pure function of the
batch's *global position* g = k * n_streams + stream index (k: the stream's batches so far):
source i such that u_g = frac(offset + g * alpha) falls in i's slice of [0, 1) (cumulative
weights), with alpha = the golden ratio's fraction (a Kronecker low-discrepancy sequence) and
offset from the data seed. Why not a random draw per batch: its shares wander by
sqrt(w (1 - w) / N) (3% after 200 batches at 0.8 / 0.2); this sequence keeps every source's
share of any N consecutive positions within O(log N) batches of w * N, and it needs no state
beyond k, so a cursor, a resume and a change of weights (a training phase) are exact and simple.
Streams advance together (torch deals batches round-robin over a rank's workers, ranks step in
lock step), so a global batch holds the sources in proportion.

A source whose stream ends (a finite pass) is dropped from the draw; the mixture ends with the
last one. Sources never wait for each other: a small source starts its next epoch (the loader
logs it) while a large one is still in its first.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pretrain.data.plan import resplit
from pretrain.data.sources import source_seed
from pretrain.data.stream import Stream, fresh_state

PURPOSE_MIX = 7
ALPHA = (math.sqrt(5.0) - 1.0) / 2.0


def mix_offset(seed: int) -> float:
    return float(np.random.Generator(np.random.PCG64([int(seed), PURPOSE_MIX])).random())


def choose_source(cumulative: list, offset: float, position: int) -> int:
    """The source of global position `position` (cumulative: running sums of the weights, last 1)."""
    u = math.fmod(offset + math.fmod(position * ALPHA, 1.0), 1.0)
    return min(bisect.bisect_right(cumulative, u), len(cumulative) - 1)


def cumulative(weights) -> list:
    total = float(sum(weights))
    out, run = [], 0.0
    for w in weights:
        run += float(w) / total
        out.append(run)
    out[-1] = 1.0
    return out


@dataclass(frozen=True)
class MixtureSpec:
    """The sources' StreamSpecs (their seeds derived per source) and the weights (normalized)."""
    names: tuple
    specs: tuple
    weights: tuple
    seed: int

    @property
    def epochs(self):
        return self.specs[0].epochs

    @property
    def with_ids(self) -> bool:
        return self.specs[0].with_ids

    def fresh_state(self) -> dict:
        return {"sources": {n: fresh_state() for n in self.names}, "drawn": 0}

    def open(self, index: int, n_streams: int, state: dict) -> "MixedStream":
        return MixedStream(self, index, n_streams, state)

    def fingerprint(self) -> str:
        """Identifies the sources and their shards (not the weights: phases may change them)."""
        keyed = [[n, s.shards.fingerprint()] for n, s in zip(self.names, self.specs)]
        return hashlib.sha256(json.dumps(keyed).encode()).hexdigest()[:16]

    def resplit(self, streams: list, seed: int, n_new: int) -> list:
        """Every source's remaining work re-split over the new streams (plan.resplit per source)."""
        per_source = {n: resplit([st["sources"][n] for st in streams], spec.shards, source_seed(seed, n), n_new)
                      for n, spec in zip(self.names, self.specs)}
        return [{"sources": {n: per_source[n][j] for n in self.names}, "drawn": 0} for j in range(n_new)]

    def epochs_of(self, state: dict) -> dict:
        return {n: int(state["sources"][n]["next_epoch"]) for n in self.names}


class MixedStream:
    def __init__(self, spec: MixtureSpec, index: int, n_streams: int, state: dict):
        self.spec, self.index, self.n_streams = spec, index, n_streams
        self.states = {n: dict(state["sources"][n]) for n in spec.names}
        self.drawn = int(state["drawn"])

    def _state(self) -> dict:
        return {"stream": self.index, "sources": {n: dict(s) for n, s in self.states.items()}, "drawn": self.drawn}

    def __iter__(self) -> Iterator[dict]:
        spec = self.spec
        weights = list(spec.weights)
        offset = mix_offset(spec.seed)
        readers: dict = {}
        while sum(weights) > 0:
            i = choose_source(cumulative(weights), offset, self.drawn * self.n_streams + self.index)
            name = spec.names[i]
            if name not in readers:   # opened on first use: a source never drawn opens no shard
                readers[name] = iter(Stream(spec.specs[i], self.index, self.n_streams, self.states[name]))
            batch = next(readers[name], None)
            self.drawn += 1
            if batch is None:
                weights[i] = 0.0
                continue
            state = batch["_state"]
            state.pop("stream", None)
            self.states[name] = state
            batch["_state"] = self._state()
            batch["source"] = i
            yield batch
