"""Worker side of `prepare`: documents -> sentence-split, tokenized, serialized shard samples.

Runs in pool processes (or inline with num_workers=0). A task is a chunk of documents so the
per-task overhead (pickling, IPC) is paid per ~1 MB of text, and `encode_batch_fast` gets many
sentences at once. Results come back in task order, so the output never depends on worker count.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from tokenizers import Tokenizer

from pretrain.prepare.sentences import split_sentences
from pretrain.shardformat import encode_document

# Bucket-file record header: doc id, sentences, tokens, len(ids.npy), len(sents.npy).
RECORD_HEADER = struct.Struct("<QIIII")

_STATE: dict = {}


@dataclass(frozen=True)
class Encoded:
    doc_id: int
    sentences: int      # 0 = the document had no tokens (skipped as empty_document)
    tokens: int
    record: bytes       # RECORD_HEADER + ids.npy + sents.npy, b"" when skipped


def init_worker(tokenizer_json: str, vocab_size: int) -> None:
    """Pool initializer: one tokenizer per process, single-threaded (the pool is the parallelism)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _STATE["tok"] = Tokenizer.from_str(tokenizer_json)
    _STATE["vocab_size"] = vocab_size


def encode_chunk(docs: list[tuple[int, str]]) -> list[Encoded]:
    tok: Tokenizer = _STATE["tok"]
    vocab_size = _STATE["vocab_size"]
    per_doc = [split_sentences(text) for _, text in docs]
    flat = [s for sents in per_doc for s in sents]
    encodings = tok.encode_batch_fast(flat, add_special_tokens=False) if flat else []
    out: list[Encoded] = []
    i = 0
    for (doc_id, _), sents in zip(docs, per_doc):
        ids = [e.ids for e in encodings[i : i + len(sents)]]
        i += len(sents)
        ids = [s for s in ids if s]  # sentences of only stripped characters tokenize to nothing
        if not ids:
            out.append(Encoded(doc_id, 0, 0, b""))
            continue
        sample = encode_document(doc_id, ids, vocab_size)
        n_tokens = sum(len(s) for s in ids)
        a, b = sample["ids.npy"], sample["sents.npy"]
        out.append(Encoded(doc_id, len(ids), n_tokens, RECORD_HEADER.pack(doc_id, len(ids), n_tokens, len(a), len(b)) + a + b))
    return out
