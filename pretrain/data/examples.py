"""Documents -> training examples: BERT's ``create_instances_from_document``, adapted.

Each example is ``[CLS] A [SEP] B [SEP]`` (or ``[CLS] A [SEP]`` for ``sentence_task="none"``)
packed up to ``max_seq_len`` at sentence boundaries. Per document a target length is drawn:
``max_seq_len - 3`` (``- 2`` without B), or with probability ``short_seq_prob`` a random length
in [2, target] so the model also sees short sequences. Sentences are accumulated into a chunk
until the target is reached; a random split point cuts the chunk into A and B.

- SOP (ALBERT): A, B are consecutive segments of the same document; with p=0.5 they are swapped
  (``sentence_label`` 1 = swapped, 0 = in order).
- NSP (BERT): with p=0.5 (always, when the chunk is one segment) B is a random run of sentences
  from *another* document: the previous document of the same work item, or the next one when
  the document is its item's first (``sentence_label`` 1 = random, 0 = true next); the unused
  segments of the chunk are put back, as in BERT.
- none: one segment per example, ``sentence_label`` -100.

A sentence longer than the target is cut into pieces of ``max(1, target // 2)`` tokens first, so
long sentences are not thrown away by truncation and still give A/B pairs.

**One-segment chunks (one-sentence documents, a lone last sentence).** SOP: the segment is cut at
its token midpoint into A and B (then swapped with p=0.5) when it has >= 2 tokens; a 1-token
chunk becomes a single-segment example with ``sentence_label`` -100. NSP: B is random (BERT's
rule); if the work item has no other document (a one-document item), the example is emitted as
a single segment with label -100. The counters ``one_sentence_documents``, ``midpoint_splits``
and ``single_segment_examples`` in `ExampleStats` count these cases; the loader exposes them.

Pairs whose total exceeds the budget are truncated longest-first, each removed token from the
front or the back with p=0.5 (BERT). Every random choice comes from a generator seeded by
(seed, epoch, doc id, purpose): never global state, never the rank, so any layout and any resume
rebuild the same examples. The draws that decide the *structure* (how many examples a document
gives) never depend on the other document, so "skip k examples of this document" stays valid
when a cursor is re-split.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import numpy as np

from pretrain.shardformat import Document

PURPOSE_PAIRS = 2
PURPOSE_RANDOM_B = 3
PURPOSE_TRUNCATE = 4
SENTENCE_TASKS = ("sop", "nsp", "none")


@dataclass
class ExampleStats:
    documents: int = 0
    one_sentence_documents: int = 0
    examples: int = 0
    midpoint_splits: int = 0
    single_segment_examples: int = 0
    split_sentences: int = 0
    truncated_examples: int = 0

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Example:
    doc_id: int
    epoch: int
    index: int               # example index within its document (seeds the mask)
    a: np.ndarray            # int64 token ids, no specials
    b: Optional[np.ndarray]  # None for a single-segment example
    label: int               # sentence_label


def rng_for(seed: int, epoch: int, doc_id: int, purpose: int, *extra: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([seed, epoch, doc_id, purpose, *extra]))


def _segments(doc: Document, target: int, piece: int, stats: ExampleStats) -> list[np.ndarray]:
    out = []
    for s in doc.sentences():
        if len(s) == 0:
            continue
        if len(s) > target:
            stats.split_sentences += 1
            out.extend(s[k:k + piece] for k in range(0, len(s), piece))
        else:
            out.append(s)
    return out


def _truncate(a: np.ndarray, b: np.ndarray, budget: int, make_rng):
    """Longest-first truncation; each removed token comes off the front or back with p=0.5."""
    excess = len(a) + len(b) - budget
    if excess <= 0:
        return a, b, False
    rng = make_rng()  # own generator per example: NSP's random B must not shift the pair draws
    la, lb = len(a), len(b)
    # Remove from the longer until equal, then alternate (ties go to B, as BERT's loop does).
    first = min(excess, abs(la - lb))
    rest = excess - first
    ra = (first if la > lb else 0) + rest // 2 + (rest % 2 if la > lb else 0)
    rb = excess - ra
    out = []
    for seg, r in ((a, ra), (b, rb)):
        front = int(rng.binomial(r, 0.5)) if r else 0
        out.append(seg[front:len(seg) - (r - front)])
    return out[0], out[1], True


def _random_b(other: Document, doc_id: int, seed: int, epoch: int, want: int) -> np.ndarray:
    rng = rng_for(seed, epoch, doc_id, PURPOSE_RANDOM_B)
    ends = other.sentence_ends
    start_sent = int(rng.integers(len(ends)))
    start = 0 if start_sent == 0 else int(ends[start_sent - 1])
    # Whole sentences from start_sent until at least `want` tokens (at least one sentence).
    stop_sent = int(np.searchsorted(ends, start + max(1, want), side="left"))
    stop = int(ends[min(stop_sent, len(ends) - 1)])
    return other.ids[start:stop]


def whole_document_examples(doc: Document, max_seq_len: int, epoch: int, stats: ExampleStats) -> list[Example]:
    """The document's tokens in order, cut into examples of ``max_seq_len - 2`` tokens (the last
    one shorter): with packing, an MLM-only example wastes nothing and truncates nothing."""
    budget = max_seq_len - 2
    ids = doc.ids
    examples = [Example(doc.doc_id, epoch, k, ids[start:start + budget], None, -100)
                for k, start in enumerate(range(0, len(ids), budget))]
    stats.single_segment_examples += len(examples)
    stats.examples += len(examples)
    return examples


def build_examples(doc: Document, other: Optional[Document], max_seq_len: int, short_seq_prob: float,
                   sentence_task: str, seed: int, epoch: int, stats: ExampleStats,
                   whole_documents: bool = False) -> list[Example]:
    """All examples of one document, in order (deterministic in (seed, epoch, doc id)).

    whole_documents (packing, sentence_task "none"): `whole_document_examples`, no short_seq_prob."""
    if sentence_task not in SENTENCE_TASKS:
        raise ValueError(f"sentence_task {sentence_task!r} not in {SENTENCE_TASKS}")
    stats.documents += 1
    if len(doc.sentence_ends) == 1:
        stats.one_sentence_documents += 1
    if whole_documents and sentence_task == "none":
        return whole_document_examples(doc, max_seq_len, epoch, stats)
    rng = rng_for(seed, epoch, doc.doc_id, PURPOSE_PAIRS)
    pair = sentence_task != "none"
    budget = max_seq_len - (3 if pair else 2)
    target = budget
    if rng.random() < short_seq_prob:
        target = int(rng.integers(2, budget + 1)) if budget >= 2 else budget
    segs = _segments(doc, target, max(1, target // 2) if pair else target, stats)
    examples: list[Example] = []

    def emit(a, b, label):
        if b is not None:
            a, b, cut = _truncate(a, b, budget, lambda: rng_for(seed, epoch, doc.doc_id, PURPOSE_TRUNCATE, len(examples)))
        else:
            cut = len(a) > budget
            a = a[:budget]
            stats.single_segment_examples += 1
        stats.truncated_examples += int(cut)
        examples.append(Example(doc.doc_id, epoch, len(examples), a, b, label))

    chunk: list[np.ndarray] = []
    length = 0
    i = 0
    while i < len(segs):
        chunk.append(segs[i])
        length += len(segs[i])
        if i == len(segs) - 1 or length >= target:
            if not pair:
                emit(np.concatenate(chunk), None, -100)
            else:
                a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
                a = np.concatenate(chunk[:a_end])
                if sentence_task == "nsp":
                    is_random = len(chunk) == 1 or rng.random() < 0.5
                    if is_random:
                        i -= len(chunk) - a_end  # put the unused segments back (BERT)
                        if other is None:
                            emit(a, None, -100)
                        else:
                            emit(a, _random_b(other, doc.doc_id, seed, epoch, target - len(a)), 1)
                    else:
                        emit(a, np.concatenate(chunk[a_end:]), 0)
                else:  # sop
                    if len(chunk) == 1:
                        if len(a) < 2:
                            emit(a, None, -100)
                            chunk, length, i = [], 0, i + 1
                            continue
                        stats.midpoint_splits += 1
                        mid = len(a) // 2
                        a, b = a[:mid], a[mid:]
                    else:
                        b = np.concatenate(chunk[a_end:])
                    if rng.random() < 0.5:
                        emit(b, a, 1)
                    else:
                        emit(a, b, 0)
            chunk, length = [], 0
        i += 1
    stats.examples += len(examples)
    return examples
