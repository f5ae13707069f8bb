"""Re-runs reproduce the same bytes, never mix old and new shards; tokenizer reuse; worker count."""
from __future__ import annotations

import glob
import hashlib
import json
import os

import pytest

from pretrain.prepare.config import PrepareError


def _digest(root: str) -> dict:
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "*", "*.tar"))):
        out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def subset(demo_corpus, tmp_path_factory):
    """~150 KB of the demo corpus: enough documents for several shards, fast to re-prepare."""
    d = tmp_path_factory.mktemp("subset")
    for name in sorted(os.listdir(demo_corpus)):
        if name.endswith(".jsonl"):
            lines = open(os.path.join(demo_corpus, name), encoding="utf-8").readlines()[:300]
            (d / name).write_text("".join(lines), encoding="utf-8")
    return d


def test_rerun_is_byte_identical_and_worker_independent(subset, prepare, tmp_path):
    m1, out = prepare([subset / "*"], validation_fraction=0.1, num_workers=0, chunk_bytes=20_000)
    d1 = _digest(out)
    m2, _ = prepare([subset / "*"], validation_fraction=0.1, num_workers=2, chunk_bytes=7_000)
    assert _digest(out) == d1 and len(d1) == 5
    assert {k: v for k, v in m1.items() if k != "config"} == {k: v for k, v in m2.items() if k != "config"}
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temp dirs left behind


def test_other_config_refused_then_overwrite_leaves_no_stale_shards(subset, prepare):
    m, out = prepare([subset / "*"], min_train_shards=6)
    assert len(m["splits"]["train"]["shards"]) == 6
    with pytest.raises(PrepareError, match="different config.*overwrite=true"):
        prepare([subset / "*"], min_train_shards=2)
    m, out = prepare([subset / "*"], min_train_shards=2, overwrite=True)
    assert sorted(os.listdir(os.path.join(out, "train"))) == ["shard-000000.tar", "shard-000001.tar"]
    assert len(m["splits"]["train"]["shards"]) == 2


def test_failed_run_keeps_previous_output(subset, prepare, tmp_path):
    m, out = prepare([subset / "*"])
    before = _digest(out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nope": 1}\n')
    with pytest.raises(PrepareError):
        prepare([subset / "*", bad], on_bad_record="error", overwrite=True)
    assert _digest(out) == before and json.load(open(os.path.join(out, "manifest.json"))) == m
    assert not [p for p in os.listdir(out) if p.startswith(".")]


def test_tokenizer_reuse_keeps_fingerprint(prepared_demo, subset, prepare):
    from tokenizers import Tokenizer

    from pretrain.shardformat import load_manifest, tokenizer_fingerprint

    m, out = prepare([subset / "*"])
    original = load_manifest(prepared_demo)
    assert m["tokenizer"]["sha256"] == original.tokenizer_sha256
    assert tokenizer_fingerprint(Tokenizer.from_file(os.path.join(out, "tokenizer.json"))) == original.tokenizer_sha256
