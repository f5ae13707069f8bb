"""Streaming over simulated ranks with real DataLoader workers: coverage, resume, re-split."""
import itertools
import json

import pytest
import torch

from pretrain.data import build_train_loader, merge_cursors


def same(a, b) -> bool:
    """Batch values: tensors (equal shape and values) or plain ints (max_seqlen)."""
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def take(it, n):
    return list(itertools.islice(it, n))


def test_one_epoch_two_ranks_two_workers_covers_every_example_once(make_cfg, expected_examples, keys):
    data, obj = make_cfg(num_workers=2)
    batches = []
    for rank in (0, 1):
        batches += list(build_train_loader(data, obj, rank, 2, epochs=1, with_ids=True))
    got = keys.of(batches)
    assert got == keys.expected(expected_examples(0), 0)
    assert all(b["input_ids"].shape[0] <= 8 for b in batches)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_resume_same_layout_is_exact_and_other_layouts_lose_nothing(make_cfg, expected_examples, keys):
    data, obj = make_cfg(num_workers=2)
    loaders = [build_train_loader(data, obj, r, 2, with_ids=True) for r in (0, 1)]
    iters = [iter(ld) for ld in loaders]
    consumed = [take(it, 9) for it in iters]
    cursor = merge_cursors([ld.state_dict() for ld in reversed(loaders)])
    cursor = json.loads(json.dumps(cursor))            # it must survive a JSON checkpoint
    reference = [take(it, 12) for it in iters]          # what the uninterrupted run yields next

    # same world size and workers: tensor-equal continuation
    for rank in (0, 1):
        ld = build_train_loader(data, obj, rank, 2, with_ids=True)
        ld.load_state_dict(cursor)
        for want, got in zip(reference[rank], take(iter(ld), 12)):
            assert want.keys() == got.keys()
            for k in want:
                assert same(want[k], got[k]), k
    # same loader, iterated again: continues after the consumed batches, not the prefetched ones
    again = take(iter(loaders[0]), 2)
    assert torch.equal(again[0]["input_ids"], take(iter(_restored(data, obj, 0, cursor, 21)), 1)[0]["input_ids"])

    # 1 rank x 1 worker, and 1 rank x 3 workers: epoch 0 stays exactly-once
    before = keys.of(b for bs in consumed for b in bs)
    for workers in (0, 3):
        d2, o2 = make_cfg(num_workers=workers)
        ld = build_train_loader(d2, o2, 0, 1, epochs=1, with_ids=True)
        ld.load_state_dict(cursor)
        after = keys.of(ld)
        assert before + after == keys.expected(expected_examples(0), 0), workers


def _restored(data, obj, rank, cursor, skip):
    ld = build_train_loader(data, obj, rank, 2, with_ids=True)
    ld.load_state_dict(cursor)
    it = iter(ld)
    take(it, skip - 9)
    return it


def test_epochs_each_cover_everything_in_a_different_order(make_cfg, expected_examples, keys):
    data, obj = make_cfg(num_workers=2)
    batches = take(iter(build_train_loader(data, obj, 0, 1, with_ids=True)), 400)
    got = keys.of(batches)
    for epoch in (0, 1):
        assert keys.epoch(got, epoch) == keys.expected(expected_examples(epoch), epoch)
    order = {e: [d for b in batches for d, ee in zip(b["doc_id"].tolist(), b["epoch"].tolist()) if ee == e]
             for e in (0, 1)}
    assert order[0] != order[1]


def test_same_seed_same_batches_other_seed_differs(make_cfg):
    data, obj = make_cfg()
    a = take(iter(build_train_loader(data, obj, 0, 1)), 3)
    b = take(iter(build_train_loader(data, obj, 0, 1)), 3)
    data.seed = 99
    c = take(iter(build_train_loader(data, obj, 0, 1)), 3)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"]) for x, y in zip(a, b))
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c))


@pytest.mark.parametrize("packing", [False, True])
def test_batch_contract_and_stats(make_cfg, packing):
    data, obj = make_cfg(packing=packing)
    ld = build_train_loader(data, obj, 0, 1)
    batches = take(iter(ld), 2)
    b = batches[1]
    assert set(b) == {"input_ids", "token_type_ids", "attention_mask", "labels", "sentence_label", "position_ids",
                      "cu_seqlens", "max_seqlen", "token_index", "example_starts", "masked_index", "sample_uniform"}
    dtypes = {"cu_seqlens": torch.int32, "sample_uniform": torch.float32}
    assert all(v.dtype == dtypes.get(k, torch.int64) for k, v in b.items() if k != "max_seqlen")
    assert b["sample_uniform"].shape == b["masked_index"].shape
    assert ((b["sample_uniform"] >= 0) & (b["sample_uniform"] < 1)).all()
    n = len(b["example_starts"])
    assert b["input_ids"].shape == (8, 64) and b["sentence_label"].shape == (n,) and b["cu_seqlens"].shape == (n + 1,)
    assert (n > 8) == packing and n >= 8
    assert isinstance(b["max_seqlen"], int) and b["max_seqlen"] == int((b["cu_seqlens"][1:] - b["cu_seqlens"][:-1]).max())
    assert torch.equal(b["token_index"], b["attention_mask"].reshape(-1).nonzero().squeeze(1))
    assert torch.equal(b["masked_index"], (b["labels"].reshape(-1) != -100).nonzero().squeeze(1))
    assert ld.stats["batches"] == 2 and ld.stats["tokens"] > 0 and ld.stats["documents"] > 0
    assert ld.stats["samples"] == sum(len(x["example_starts"]) for x in batches)   # examples, not rows


def test_exact_resume_with_nsp_and_whole_word_masking(make_cfg):
    data, obj = make_cfg(num_workers=2, sentence_task="nsp", masking="whole_word")
    ld = build_train_loader(data, obj, 0, 1, with_ids=True)
    it = iter(ld)
    take(it, 7)
    cursor = merge_cursors([ld.state_dict()])
    want = take(it, 6)
    again = build_train_loader(data, obj, 0, 1, with_ids=True)
    again.load_state_dict(cursor)
    got = take(iter(again), 6)
    assert all(same(w[k], g[k]) for w, g in zip(want, got) for k in w)
    assert any((b["sentence_label"] == 1).any() for b in got)


def test_loader_workers_default_from_the_cpus_per_rank(monkeypatch):
    import os

    from pretrain.data.build import MAX_AUTO_WORKERS, loader_workers

    assert loader_workers(3) == 3 and loader_workers(0) == 0            # explicit wins
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert loader_workers(None, {"LOCAL_WORLD_SIZE": "1"}) == MAX_AUTO_WORKERS   # 15, capped
    assert loader_workers(None, {"LOCAL_WORLD_SIZE": "4"}) == 3                  # 4 CPUs each, one for the rank
    assert loader_workers(None, {"LOCAL_WORLD_SIZE": "16"}) == 1                 # never 0 by default
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert loader_workers(None, {}) == 1


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_a_cursor_cut_to_documents_continues_at_another_length_without_repeating(make_cfg, expected_examples):
    """A phase that changes max_seq_len: documents started before the cut are not read again,
    every other document of the epoch is read after it, at the new length."""
    from pretrain.data import cut_cursor

    data, obj = make_cfg(num_workers=2)
    loaders = [build_train_loader(data, obj, r, 2, with_ids=True) for r in (0, 1)]
    before = [b for ld in loaders for b in take(iter(ld), 7)]
    cursor, cut = cut_cursor(json.loads(json.dumps(merge_cursors([ld.state_dict() for ld in loaders]))))
    assert cut >= 1
    longer, _ = make_cfg(num_workers=1, max_seq_len=128)
    after = []
    for rank in (0, 1):
        ld = build_train_loader(longer, obj, rank, 2, with_ids=True, epochs=1)
        ld.load_state_dict(cursor)
        after += list(ld)
    docs_before = {d for b in before for d in b["doc_id"].tolist()}
    docs_after = {d for b in after for d in b["doc_id"].tolist()}
    assert not docs_before & docs_after
    assert docs_before | docs_after == set(expected_examples(0))
    assert max(b["input_ids"].shape[1] for b in after) == 128
