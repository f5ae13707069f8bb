"""Small, realistic prepared directories without running `pretrain-prepare` (tests, benchmarks).

Text: the Python documentation topics shipped with CPython (`pydoc_data.topics`), split into
sentences with a regex and grouped into documents; a small WordPiece tokenizer is trained on it
with `tokenizers`, so there are real ``##`` continuation pieces for whole-word masking. The
output follows pretrain/shardformat.py exactly (manifest, tokenizer.json, tar shards).
"""
from __future__ import annotations

import json
import os
import re

import webdataset as wds

from pretrain.shardformat import MANIFEST_FORMAT, SPECIAL_TOKENS, encode_document, tokenizer_fingerprint

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def corpus_sentences(limit: int | None = None) -> list[str]:
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        text = re.sub(r"\s+", " ", topics[name]).strip()
        out.extend(s for s in _SENTENCE.split(text) if len(s.split()) >= 3)
        if limit and len(out) >= limit:
            break
    return out[:limit] if limit else out


def train_tokenizer(sentences: list[str], vocab_size: int = 2000):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    from pretrain.prepare.tokenizer import train_wordpiece

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return train_wordpiece(tok, lambda: sentences, vocab_size, min_frequency=0)


def write_prepared(root: str, shards: dict[str, int] = None, docs_per_shard: int = 40, vocab_size: int = 2000,
                   one_sentence_every: int = 7, max_sentences: int = 12) -> str:
    """Write ``root`` with splits {name: n_shards}; returns root. Deterministic."""
    shards = shards or {"train": 6, "valid": 1}
    sentences = corpus_sentences()
    tok = train_tokenizer(sentences, vocab_size)
    os.makedirs(root, exist_ok=True)
    tok.save(os.path.join(root, "tokenizer.json"))
    encoded = [e.ids for e in tok.encode_batch(sentences, add_special_tokens=False)]
    vsize = tok.get_vocab_size()
    doc_id, cursor = 0, 0
    splits = {}
    for split, n_shards in shards.items():
        os.makedirs(os.path.join(root, split), exist_ok=True)
        infos = []
        for s in range(n_shards):
            name = f"{split}/shard-{s:06d}.tar"
            n_sent = n_tok = 0
            with wds.TarWriter(os.path.join(root, name)) as w:
                for d in range(docs_per_shard):
                    k = 1 if doc_id % one_sentence_every == 3 else 2 + (doc_id * 7919) % (max_sentences - 1)
                    sents = [encoded[(cursor + j) % len(encoded)] for j in range(k)]
                    cursor += k
                    w.write(encode_document(doc_id, sents, vsize))
                    doc_id += 1
                    n_sent += k
                    n_tok += sum(map(len, sents))
            infos.append({"name": name, "documents": docs_per_shard, "sentences": n_sent, "tokens": n_tok,
                          "bytes": os.path.getsize(os.path.join(root, name))})
        splits[split] = {"shards": infos, "documents": sum(i["documents"] for i in infos),
                         "sentences": sum(i["sentences"] for i in infos),
                         "tokens": sum(i["tokens"] for i in infos), "skipped": {}}
    vocab = tok.get_vocab()
    manifest = {
        "format": MANIFEST_FORMAT,
        "tokenizer": {"file": "tokenizer.json", "sha256": tokenizer_fingerprint(tok), "vocab_size": vsize,
                      "lowercase": True, "special_tokens": {t: vocab[t] for t in SPECIAL_TOKENS}},
        "splits": splits,
        "inputs": [{"path": "pydoc_data.topics", "bytes": 0, "documents": doc_id, "skipped": {}}],
        "config": {"synthetic": True},
        "config_hash": "synthetic",
    }
    with open(os.path.join(root, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return root
