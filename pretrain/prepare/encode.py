"""Worker side of `prepare`: documents -> sentence-split, tokenized, serialized shard samples.

Runs in pool processes (or inline with num_workers=0). A task is a chunk of documents so the
per-task overhead (pickling, IPC) is paid per ~1 MB of text. Sentences are tokenized by
`tokencache.CachedEncoder` (exactly `encode_batch_fast`'s ids, each distinct whitespace-separated
chunk tokenized once per worker). Results come back in task order, so the output never depends on worker count.
"""
from __future__ import annotations

import array
import itertools
import os
import struct
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from pretrain.prepare.sentences import split_sentences
from pretrain.prepare.tokencache import CachedEncoder
from pretrain.shardformat import ids_dtype, npy_1d

# Bucket-file record header: doc id, sentences, tokens, len(ids.npy), len(sents.npy).
RECORD_HEADER = struct.Struct("<QIIII")

_STATE: dict = {}
_INT32 = np.dtype(np.int32)


@dataclass(frozen=True)
class Encoded:
    doc_id: int
    sentences: int      # 0 = the document had no tokens (skipped as empty_document)
    tokens: int
    record: bytes       # RECORD_HEADER + ids.npy + sents.npy, b"" when skipped


def load_state(tokenizer_json: str, vocab_size: int) -> None:
    """Build this process's encoder (with fork, the parent does it once and workers inherit it)."""
    dtype = ids_dtype(vocab_size)
    _STATE["encoder"] = CachedEncoder(Tokenizer.from_str(tokenizer_json), dtype)
    _STATE["dtype"] = dtype


def init_worker(tokenizer_json: str, vocab_size: int) -> None:
    """Pool initializer: one tokenizer per process, single-threaded (the pool is the parallelism)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    load_state(tokenizer_json, vocab_size)


def init_forked_worker() -> None:
    """Pool initializer under fork: the encoder came with the fork; just stay single-threaded."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def encode_chunk(docs: list[tuple[int, str]]) -> list[Encoded]:
    encoder: CachedEncoder = _STATE["encoder"]
    dtype: np.dtype = _STATE["dtype"]
    width = dtype.itemsize
    per_doc = [split_sentences(text) for _, text in docs]
    encoded = encoder.encode([s for sents in per_doc for s in sents])  # ids bytes per sentence
    out: list[Encoded] = []
    i = 0
    for (doc_id, _), sents in zip(docs, per_doc):
        parts = [b for b in encoded[i : i + len(sents)] if b]  # sentences of only stripped characters have no ids
        i += len(sents)
        if not parts:
            out.append(Encoded(doc_id, 0, 0, b""))
            continue
        ends = list(itertools.accumulate(len(p) // width for p in parts))
        n_tokens = ends[-1]
        # What shardformat.encode_document writes, without going through Python lists of ids.
        a = npy_1d(b"".join(parts), dtype, n_tokens)
        b = npy_1d(array.array("i", ends).tobytes(), _INT32, len(ends))
        out.append(Encoded(doc_id, len(parts), n_tokens, RECORD_HEADER.pack(doc_id, len(parts), n_tokens, len(a), len(b)) + a + b))
    return out
