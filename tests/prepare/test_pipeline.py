"""prepare on real text: shards readable by tar and plain webdataset, counts add up."""
from __future__ import annotations

import glob
import gzip
import json
import os
import subprocess

import numpy as np
import pytest

from pretrain.shardformat import decode_document, load_manifest


def _independent_record_count(corpus_dir: str) -> int:
    """Count documents the simplest possible way: blank-line blocks in .txt, lines in .jsonl(.gz)."""
    n = 0
    for path in sorted(glob.glob(os.path.join(corpus_dir, "*"))):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
        if ".txt" in path:
            n += sum(1 for block in text.split("\n\n") if block.strip())
        else:
            n += sum(1 for line in text.splitlines() if line.strip())
    return n


def _all_samples(root: str, split: str):
    import webdataset as wds

    m = load_manifest(root)
    for url in m.shard_urls(split):
        yield url, list(wds.WebDataset(url, shardshuffle=False))


def test_manifest_counts_match_input(prepared_demo, demo_corpus):
    m = load_manifest(prepared_demo)
    raw = m.raw
    records_in = _independent_record_count(demo_corpus)
    total_docs = sum(s.documents for s in m.splits.values())
    total_skips = sum(sum(s.skipped.values()) for s in m.splits.values())
    # A document over max_document_chars becomes several (test_long_documents.py): records in =
    # documents out + skips - the extra pieces, overall, per split and per input.
    extra = sum(raw["splits"][s]["split_pieces"] - raw["splits"][s]["split_documents"] for s in m.splits)
    assert total_docs + total_skips - extra == records_in
    assert sum(raw["splits"][s]["records"] for s in m.splits) == records_in
    assert sum(i["records"] for i in raw["inputs"]) == records_in
    assert sum(i["documents"] for i in raw["inputs"]) == total_docs
    for part in [*raw["splits"].values(), *raw["inputs"]]:
        assert part["documents"] + sum(part["skipped"].values()) == part["records"] + part["split_pieces"] - part["split_documents"]
    assert [os.path.basename(i["path"]) for i in raw["inputs"]] == sorted(os.listdir(demo_corpus))
    for split, info in m.splits.items():
        assert info.documents == sum(s["documents"] for s in info.shards)
        assert info.sentences == sum(s["sentences"] for s in info.shards)
        assert info.tokens == sum(s["tokens"] for s in info.shards)
        assert 0 <= raw["splits"][split]["one_sentence_documents"] <= info.documents
    assert len(m.splits["train"].shards) == 4 and len(m.splits["valid"].shards) == 1
    assert 0 < m.splits["valid"].documents < 0.15 * total_docs
    assert m.vocab_size == 2000 and m.special_tokens == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}


def test_shards_readable_by_tar_and_webdataset(prepared_demo):
    import webdataset as wds

    m = load_manifest(prepared_demo)
    seen: set[int] = set()
    for split, info in m.splits.items():
        for shard, url in zip(info.shards, m.shard_urls(split)):
            assert os.path.basename(url) == f"shard-{info.shards.index(shard):06d}.tar"
            names = subprocess.run(["tar", "tf", url], check=True, capture_output=True, text=True).stdout.split()
            assert len(names) == 2 * shard["documents"]
            assert all(n.endswith((".ids.npy", ".sents.npy")) for n in names)
            assert os.path.getsize(url) == shard["bytes"]
            tokens = sentences = 0
            for sample in wds.WebDataset(url, shardshuffle=False).decode():
                ids, ends = sample["ids.npy"], sample["sents.npy"]
                assert isinstance(ids, np.ndarray) and ids.dtype == np.uint16
                assert len(ends) >= 1 and ends[-1] == len(ids) and np.all(np.diff(ends) > 0)
                assert ids.max() < m.vocab_size and ids.min() > 4  # no specials inside documents
                tokens += len(ids)
                sentences += len(ends)
            assert (tokens, sentences) == (shard["tokens"], shard["sentences"])
        for _, samples in _all_samples(prepared_demo, split):
            for s in samples:
                doc = decode_document(s)
                assert doc.doc_id not in seen  # unique across shards and splits
                seen.add(doc.doc_id)
    assert len(seen) == sum(s.documents for s in m.splits.values())


def test_documents_shuffled_across_shards(prepared_demo):
    ids_per_shard = [[decode_document(s).doc_id for s in samples] for _, samples in _all_samples(prepared_demo, "train")]
    means = [np.mean(x) for x in ids_per_shard]
    overall = np.mean([i for x in ids_per_shard for i in x])
    assert all(abs(mu - overall) < 0.2 * overall for mu in means)  # not contiguous id ranges
    assert any(x != sorted(x) for x in ids_per_shard)


def test_tokenizer_loads_in_transformers_and_round_trips(prepared_demo):
    transformers = pytest.importorskip("transformers")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(prepared_demo, "tokenizer.json"))
    enc = tok("The assert statement is a debugging aid.")["input_ids"]
    assert enc[0] == 2 and enc[-1] == 3
    assert tok.decode(enc, skip_special_tokens=True) == "the assert statement is a debugging aid."
    manifest = json.load(open(os.path.join(prepared_demo, "manifest.json")))
    assert manifest["tokenizer"]["lowercase"] is True
