"""Rows of examples -> a padded, masked batch (the dict in docs/architecture.md), vectorised with numpy.

Masks do not depend on where an example lands: each example is masked on its own (its budget,
its generator, positions relative to its [CLS]) before it is placed in its row.

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

`sample_uniform` [M] float32 holds one uniform number per masked position (row-major, the order of
`masked_index`), from the example's own stream (seed, epoch, doc id, example index, a purpose of
its own): an objective that samples a token there (ELECTRA's generator) draws with it, so a
sample depends on the example alone, never on the step, rank or world size.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from pretrain.data.config import ObjectiveConfig
from pretrain.data.examples import Example, rng_for
from pretrain.data.tokens import TokenTable
from pretrain.model.layout import batch_layout

PURPOSE_MASK = 5
PURPOSE_SAMPLE = 6
MASKING_MODES = ("token", "whole_word", "span")


class Masker:
    def __init__(self, table: TokenTable, cfg: ObjectiveConfig, seed: int, max_seq_len: int):
        if cfg.masking not in MASKING_MODES:
            raise ValueError(f"objective.masking {cfg.masking!r} not in {MASKING_MODES}")
        self.t, self.cfg, self.seed, self.L = table, cfg, seed, max_seq_len

    def collate(self, rows: Sequence) -> dict:
        """Rows (each an Example, or a list of Examples packed into one row) -> the batch dict
        (docs/data.md "Batch"): int64 tensors, the layout fields, one sentence label per example.

        Every example is encoded and masked on its own, left-aligned in a [max_seq_len] vector
        (so its tokens and mask are the same in any row, at any offset), then placed in its row."""
        rows = [[r] if isinstance(r, Example) else list(r) for r in rows]
        examples = [ex for row in rows for ex in row]
        ids, tt, labels, lengths = self._encode(examples)
        uniform = np.stack([rng_for(self.seed, ex.epoch, ex.doc_id, PURPOSE_SAMPLE, ex.index).random(self.L)
                            for ex in examples])
        b, n, L = len(rows), len(examples), self.L
        if n == b:   # one example per row: the rows are the encoded examples
            out_ids, out_tt, out_labels, out_uniform = ids, tt, labels, uniform
            attention = (np.arange(L)[None, :] < lengths[:, None]).astype(np.int64)
            positions = np.broadcast_to(np.arange(L, dtype=np.int64), (b, L)).copy()
        else:
            out_ids, out_tt, out_labels, attention, positions, out_uniform = self._place(rows, ids, tt, labels, lengths,
                                                                                        uniform)
        batch = {
            "input_ids": torch.from_numpy(out_ids),
            "token_type_ids": torch.from_numpy(out_tt),
            "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(out_labels),
            "position_ids": torch.from_numpy(positions),
            "sentence_label": torch.tensor([ex.label for ex in examples], dtype=torch.int64),
            "sample_uniform": torch.from_numpy(out_uniform[out_labels != -100].astype(np.float32)),
        }
        batch.update(batch_layout(batch["attention_mask"], batch["position_ids"], batch["labels"]))
        return batch

    def _place(self, rows, ids, tt, labels, lengths, uniform):
        """Examples ([N, L] left-aligned) -> rows [B, L]: each at its offset; positions restart at
        0 per example; pads continue their row's last example."""
        b, L = len(rows), self.L
        counts = np.array([len(r) for r in rows])
        row_of = np.repeat(np.arange(b), counts)
        ends = np.cumsum(lengths)
        starts_all = ends - lengths
        row_first = np.cumsum(counts) - counts                 # index of each row's first example
        offset = starts_all - starts_all[row_first][row_of]    # offset of each example in its row
        if (offset + lengths > L).any():
            raise ValueError("a packed row exceeds max_seq_len")
        within = np.arange(int(ends[-1])) - np.repeat(starts_all, lengths)   # position in its example
        example_of = np.repeat(np.arange(len(lengths)), lengths)
        dest = np.repeat(row_of * L + offset, lengths) + within
        src = example_of * L + within
        out_ids = np.full((b, L), self.t.pad_id, dtype=np.int64)
        out_tt = np.zeros((b, L), dtype=np.int64)
        out_labels = np.full((b, L), -100, dtype=np.int64)
        attention = np.zeros((b, L), dtype=np.int64)
        positions = np.zeros((b, L), dtype=np.int64)
        out_uniform = np.zeros((b, L))
        for out, values in ((out_ids, ids), (out_tt, tt), (out_labels, labels), (out_uniform, uniform)):
            out.reshape(-1)[dest] = values.reshape(-1)[src]
        attention.reshape(-1)[dest] = 1
        positions.reshape(-1)[dest] = within
        last_start = offset[row_first + counts - 1]
        fill = last_start + lengths[row_first + counts - 1]
        col = np.arange(L)[None, :]
        tail = col >= fill[:, None]
        positions = np.where(tail, col - last_start[:, None], positions)
        return out_ids, out_tt, out_labels, attention, positions, out_uniform

    def _encode(self, examples: Sequence[Example]):
        """Each example as [CLS] A [SEP] (B [SEP]), padded to L, masked: ids, token types, labels
        [N, L] and lengths [N]."""
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
        return ids, tt, labels, lengths

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
