"""Synthetic prepared shards for the data tests (6 train shards x 40 docs, 1 valid shard)."""
from __future__ import annotations

import collections

import pytest

from pretrain.data.config import DataConfig, ObjectiveConfig
from pretrain.data.examples import ExampleStats, build_examples
from pretrain.data.plan import WorkItem
from pretrain.data.stream import read_item
from pretrain.shardformat import load_manifest

SEQ = 64
BATCH = 8


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    from pretrain.data.synthetic import write_prepared

    return write_prepared(str(tmp_path_factory.mktemp("prepared")), {"train": 6, "valid": 1}, docs_per_shard=40)


@pytest.fixture(params=[True, False], ids=["packed", "unpacked"])
def make_cfg(data_dir, request):
    """Every loader test runs with packing on (the default) and off."""
    def make(**kw):
        obj = {k: kw.pop(k) for k in list(kw) if hasattr(ObjectiveConfig, k)}
        base = dict(path=data_dir, max_seq_len=SEQ, micro_batch_size=BATCH, num_workers=0, packing=request.param)
        base.update(kw)
        return DataConfig(**base), ObjectiveConfig(**obj)
    return make


@pytest.fixture(scope="session")
def expected_examples(data_dir):
    """epoch -> {doc_id: number of examples} built straight from the shards (SOP, seed 1234)."""
    cache = {}

    def get(epoch: int, seed: int = 1234, task: str = "sop") -> dict:
        if (epoch, seed, task) not in cache:
            out = {}
            for url in load_manifest(data_dir).shard_urls("train"):
                for _, doc, other in read_item(WorkItem(url, 0, 1, 0, epoch)):
                    out[doc.doc_id] = len(build_examples(doc, other, SEQ, 0.1, task, seed, epoch, ExampleStats()))
            cache[epoch, seed, task] = out
        return cache[epoch, seed, task]
    return get


class Keys:
    """Counting examples by (epoch, doc_id, example_index): the exactly-once checks."""

    @staticmethod
    def of(batches) -> collections.Counter:
        """Counter of (epoch, doc_id, example_index) over batches that carry the debug keys."""
        c = collections.Counter()
        for b in batches:
            c.update(zip(b["epoch"].tolist(), b["doc_id"].tolist(), b["example_index"].tolist()))
        return c

    @staticmethod
    def expected(per_doc: dict, epoch: int) -> collections.Counter:
        return collections.Counter((epoch, d, i) for d, n in per_doc.items() for i in range(n))

    @staticmethod
    def epoch(counter: collections.Counter, epoch: int) -> collections.Counter:
        return collections.Counter({k: v for k, v in counter.items() if k[0] == epoch})


@pytest.fixture
def keys():
    return Keys
