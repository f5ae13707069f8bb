"""Mixtures (data.sources): shares, exact resume, exactly-once per source across a re-split, refusals."""
import collections
import itertools
import json

import pytest
import torch

from pretrain.data import DataError, build_eval_loader, build_train_loader, merge_cursors
from pretrain.data.config import DataConfig, ObjectiveConfig, SourceConfig
from pretrain.data.mixture import choose_source, cumulative, mix_offset

SEQ, BATCH = 64, 8


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    from pretrain.data.synthetic import write_prepared

    return write_prepared(str(tmp_path_factory.mktemp("small")), {"train": 2, "valid": 1}, docs_per_shard=12)


def mix(data_dir, small_dir, weights=(0.8, 0.2), packing=True, **kw):
    sources = [SourceConfig(name="big", path=data_dir, weight=weights[0]),
               SourceConfig(name="small", path=small_dir, weight=weights[1])]
    base = dict(sources=sources, max_seq_len=SEQ, micro_batch_size=BATCH, num_workers=0, packing=packing)
    base.update(kw)
    return DataConfig(**base), ObjectiveConfig()


def take(it, n):
    return list(itertools.islice(it, n))


def keys_of(batches, source=None):
    """(source, epoch, doc_id, example_index) of every example."""
    c = collections.Counter()
    for b in batches:
        if source is not None and b["source"] != source:
            continue
        c.update((b["source"], *k) for k in zip(b["epoch"].tolist(), b["doc_id"].tolist(), b["example_index"].tolist()))
    return c


def test_the_sequence_keeps_shares_within_a_few_batches_at_any_length():
    cum = cumulative([0.8, 0.2])
    offset = mix_offset(1234)
    picks = [choose_source(cum, offset, g) for g in range(5000)]
    for n in (50, 200, 1000, 5000):
        assert abs(picks[:n].count(1) - 0.2 * n) <= 3, n
    # any window, not only prefixes (a stream reads every n-th position)
    for start, stride in ((17, 1), (3, 4), (1, 7)):
        window = picks[start::stride][:200]
        assert abs(window.count(1) - 0.2 * len(window)) <= 4, (start, stride)
    three = cumulative([0.5, 0.0, 0.5])
    assert 1 not in [choose_source(three, offset, g) for g in range(1000)]


@pytest.mark.parametrize("world,workers", [(1, 0), (1, 2), (2, 2)])
def test_consumed_shares_match_the_weights(data_dir, small_dir, world, workers):
    data, obj = mix(data_dir, small_dir, num_workers=workers)
    loaders = [build_train_loader(data, obj, r, world) for r in range(world)]
    batches = [b for ld in loaders for b in take(iter(ld), 200 // world)]
    share = sum(b["source"] == 1 for b in batches) / len(batches)
    assert abs(share - 0.2) <= 0.02, share
    stats = collections.Counter()
    for ld in loaders:
        stats.update(ld.stats)
    assert stats["source/big/batches"] + stats["source/small/batches"] == stats["batches"] == len(batches)
    assert stats["source/small/samples"] > 0 and stats["source/big/tokens"] > stats["source/small/tokens"]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("packing", [True, False], ids=["packed", "unpacked"])
def test_resume_is_exact_and_a_resplit_keeps_exactly_once_per_source(data_dir, small_dir, packing):
    data, obj = mix(data_dir, small_dir, num_workers=2, packing=packing)
    epochs = []
    loaders = [build_train_loader(data, obj, r, 2, with_ids=True,
                                  on_epoch=lambda s, e, r=r: epochs.append((r, s, e))) for r in (0, 1)]
    iters = [iter(ld) for ld in loaders]
    consumed = [take(it, 15) for it in iters]
    cursor = json.loads(json.dumps(merge_cursors([ld.state_dict() for ld in loaders])))
    reference = [take(it, 10) for it in iters]
    # the small source (24 documents) is read again while the big one is in its first epoch
    assert any(s == "small" and e >= 1 for _, s, e in epochs), epochs
    assert not any(s == "big" for _, s, e in epochs)

    for rank in (0, 1):   # same layout: tensor-equal continuation, same sources
        ld = build_train_loader(data, obj, rank, 2, with_ids=True)
        ld.load_state_dict(cursor)
        for want, got in zip(reference[rank], take(iter(ld), 10)):
            assert want["source"] == got["source"]
            for k in ("input_ids", "labels", "doc_id", "example_index", "epoch"):
                assert torch.equal(want[k], got[k]), k

    # 2 ranks -> 1 rank: the big source's first epoch is still read exactly once
    before = keys_of((b for bs in consumed for b in bs), source=0)
    d1, _ = mix(data_dir, small_dir, num_workers=0, packing=packing, sources=[
        SourceConfig(name="big", path=data_dir, weight=1.0), SourceConfig(name="small", path=small_dir, weight=0.0)])
    ld = build_train_loader(d1, obj, 0, 1, with_ids=True, epochs=1)
    ld.load_state_dict(cursor)
    after = keys_of(ld, source=0)
    whole = keys_of(build_train_loader(d1, obj, 0, 1, with_ids=True, epochs=1), source=0)
    assert before + after == whole
    assert max(whole.values()) == 1


def test_a_source_at_weight_zero_is_never_opened_and_finite_mixtures_end(data_dir, small_dir):
    data, obj = mix(data_dir, small_dir, weights=(0.0, 1.0))
    batches = list(build_train_loader(data, obj, 0, 1, epochs=1, with_ids=True))
    assert {b["source"] for b in batches} == {1}
    assert len(keys_of(batches)) == sum(keys_of(batches).values())   # one pass, nothing twice


def test_temperature_weights_follow_sizes(data_dir, small_dir):
    from pretrain.data.build import train_spec

    data, obj = mix(data_dir, small_dir, weights=(None, None), source_temperature=1.0)
    by_size = train_spec(data, obj).weights
    data.source_temperature = 4.0
    flat = train_spec(data, obj).weights
    assert by_size[0] > flat[0] > 0.5 > flat[1] > by_size[1]
    assert abs(sum(flat) - 1) < 1e-9


def test_eval_loader_reads_one_source(data_dir, small_dir):
    data, obj = mix(data_dir, small_dir)
    docs = {name: {d for b in build_eval_loader(data, obj, 0, 1, source=name, with_ids=True) for d in b["doc_id"].tolist()}
            for name in ("big", "small")}
    assert docs["big"] and docs["small"] and docs["big"] != docs["small"]
    with pytest.raises(DataError, match="no data source named 'nope'"):
        build_eval_loader(data, obj, 0, 1, source="nope")


def test_bad_mixtures_are_one_line_errors(data_dir, small_dir, tmp_path):
    from pretrain.data.synthetic import write_prepared

    other = write_prepared(str(tmp_path / "other"), {"train": 1, "valid": 1}, docs_per_shard=5, vocab_size=1500)
    cases = [
        (dict(weights=(0.0, 0.0)), "must sum to a positive number"),
        (dict(weights=(1.0, -1.0)), r"data.sources\[1\].weight' = -1.0; must be >= 0"),
        (dict(weights=(1.0, None)), r"data.sources\[1\].weight' must be set"),
        (dict(source_temperature=2.0), r"data.sources\[0\].weight' is set together with data.source_temperature"),
        (dict(path=data_dir), "data.path=.* and data.sources are both set"),
        (dict(sources=[SourceConfig(name="a", path=data_dir, weight=1), SourceConfig(name="a", path=small_dir, weight=1)]),
         r"data.sources\[1\].name' = 'a' is used twice"),
        (dict(sources=[SourceConfig(name="a", path=data_dir, weight=1), SourceConfig(name="b", path=other, weight=1)]),
         r"'b' \(.*other/tokenizer.json\) and 'a' \(.*tokenizer.json\) were prepared with different tokenizers"),
    ]
    for kw, message in cases:
        weights = kw.pop("weights", (0.8, 0.2))
        data, obj = mix(data_dir, small_dir, weights=weights, **kw)
        with pytest.raises(DataError, match=message) as e:
            build_train_loader(data, obj, 0, 1)
        assert "\n" not in str(e.value)
