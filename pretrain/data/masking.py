"""Examples -> a padded, masked batch (the dict in docs/architecture.md), vectorised with numpy.

How many: per sequence ``n = max(1, round(mlm_probability * m))`` where m = number of maskable
tokens (every real token except [CLS]/[SEP]/[PAD] and other special ids). Which:
- ``token``: n positions uniformly without replacement;
- ``whole_word``: words (a piece plus its following ``##`` pieces) in random order, taken while the
  total stays <= n (the first word is always taken), so a word is masked entirely or not at all;
- ``span`` (SpanBERT): spans of whole words, length in words ~ Geometric(span_geometric_p)
  clipped to span_max_length, at random word starts, until n tokens are reached (a span stops
  early at an already-masked word or where it would exceed n; the first span always keeps its
  first word).
Each selected position becomes [MASK] with p=mask_token_prob, a random non-special id with
p=random_token_prob, and stays unchanged otherwise; ``labels`` holds the original id there and
-100 elsewhere. The generator of an example is seeded by (seed, epoch, doc id, example index),
so a resumed or re-split run sees the same masks.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from pretrain.data.config import ObjectiveConfig
from pretrain.data.examples import Example, rng_for
from pretrain.data.tokens import TokenTable

PURPOSE_MASK = 5
MASKING_MODES = ("token", "whole_word", "span")


class Masker:
    def __init__(self, table: TokenTable, cfg: ObjectiveConfig, seed: int, max_seq_len: int):
        if cfg.masking not in MASKING_MODES:
            raise ValueError(f"objective.masking {cfg.masking!r} not in {MASKING_MODES}")
        self.t, self.cfg, self.seed, self.L = table, cfg, seed, max_seq_len

    def collate(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Pad, build segment ids, mask; returns int64 tensors (+ nothing else)."""
        t, L, B = self.t, self.L, len(examples)
        ids = np.full((B, L), t.pad_id, dtype=np.int64)
        tt = np.zeros((B, L), dtype=np.int64)
        maskable = np.zeros((B, L), dtype=bool)
        lengths = np.zeros(B, dtype=np.int64)
        for r, ex in enumerate(examples):
            na = len(ex.a)
            ids[r, 0] = t.cls_id
            ids[r, 1:1 + na] = ex.a
            ids[r, 1 + na] = t.sep_id
            maskable[r, 1:1 + na] = True
            n = 2 + na
            if ex.b is not None:
                nb = len(ex.b)
                ids[r, n:n + nb] = ex.b
                ids[r, n + nb] = t.sep_id
                tt[r, n:n + nb + 1] = 1
                maskable[r, n:n + nb] = True
                n += nb + 1
            lengths[r] = n
        maskable &= ~t.is_special[ids]
        attention = (np.arange(L)[None, :] < lengths[:, None]).astype(np.int64)
        # One generator per example; its first draw is a [3, L] block: selection keys,
        # 80/10/10 decisions, replacement ids.
        u = np.empty((B, 3, L))
        rngs = []
        for r, ex in enumerate(examples):
            rng = rng_for(self.seed, ex.epoch, ex.doc_id, PURPOSE_MASK, ex.index)
            u[r] = rng.random((3, L))
            rngs.append(rng)
        m = maskable.sum(1)
        n_mask = np.where(m > 0, np.maximum(1, np.floor(self.cfg.mlm_probability * m + 0.5)), 0).astype(np.int64)
        if self.cfg.masking == "token":
            keys = np.where(maskable, u[:, 0], np.inf)
            rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
            selected = (rank < n_mask[:, None]) & maskable
        else:
            selected = np.zeros((B, L), dtype=bool)
            for r in range(B):
                selected[r] = self._select_words(ids[r], maskable[r], int(n_mask[r]), u[r, 0], rngs[r])
        labels = np.where(selected, ids, -100)
        p_mask, p_rand = self.cfg.mask_token_prob, self.cfg.random_token_prob
        to_mask = selected & (u[:, 1] < p_mask)
        to_rand = selected & (u[:, 1] >= p_mask) & (u[:, 1] < p_mask + p_rand)
        pool = t.replacement_ids
        rand_ids = pool[np.minimum((u[:, 2] * len(pool)).astype(np.int64), len(pool) - 1)]
        ids = np.where(to_mask, t.mask_id, np.where(to_rand, rand_ids, ids))
        return {
            "input_ids": torch.from_numpy(ids),
            "token_type_ids": torch.from_numpy(tt),
            "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(labels),
            "sentence_label": torch.tensor([ex.label for ex in examples], dtype=torch.int64),
        }

    def _select_words(self, ids, maskable, n, keys, rng) -> np.ndarray:
        pos = np.flatnonzero(maskable)
        out = np.zeros(len(ids), dtype=bool)
        if n == 0 or len(pos) == 0:
            return out
        # A word starts at a non-"##" piece or wherever maskable positions are not contiguous
        # (segment starts), so a "##" piece right after [SEP] starts a word of its own.
        gap = np.ones(len(pos), dtype=bool)
        gap[1:] = pos[1:] != pos[:-1] + 1
        starts = gap | ~self.t.is_continuation[ids[pos]]
        word_of = np.cumsum(starts) - 1
        first = np.flatnonzero(starts)
        wlen = np.diff(np.append(first, len(pos)))
        chosen = np.zeros(len(first), dtype=bool)
        if self.cfg.masking == "whole_word":
            order = np.argsort(keys[pos[first]], kind="stable")
            take = np.cumsum(wlen[order]) <= n
            take[0] = True
            chosen[order[take]] = True
        else:
            self._spans(chosen, wlen, n, rng)
        out[pos] = chosen[word_of]
        return out

    def _spans(self, chosen, wlen, n, rng) -> None:
        nw = len(wlen)
        p, cap = self.cfg.span_geometric_p, self.cfg.span_max_length
        count, tries = 0, 0
        while count < n and tries < 4 * nw + 8:
            lens = np.minimum(rng.geometric(p, size=16), cap)
            starts = rng.integers(nw, size=16)
            for span, w in zip(lens, starts):
                tries += 1
                if chosen[w]:
                    continue
                for k in range(w, min(nw, w + int(span))):
                    if chosen[k] or (count + wlen[k] > n and count > 0):
                        break
                    chosen[k] = True
                    count += int(wlen[k])
                if count >= n:
                    break
