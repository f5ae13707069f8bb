"""Packed rows: every example in exactly one row, rows full, an example the same wherever it lands,
MLM-only examples are whole documents, and the cursor names what the packer still holds."""
import collections
import itertools
import json

import numpy as np
import pytest
import torch

from pretrain.data import build_train_loader, merge_cursors
from pretrain.data.config import DataConfig, ObjectiveConfig
from pretrain.data.examples import Example
from pretrain.data.packing import Packer, example_length
from pretrain.shardformat import load_manifest
from pretrain.data.stream import read_item
from pretrain.data.plan import WorkItem

SEQ = 64


def cfg(data_dir, **kw):
    obj = {k: kw.pop(k) for k in list(kw) if hasattr(ObjectiveConfig, k)}
    base = dict(path=data_dir, max_seq_len=SEQ, micro_batch_size=8, num_workers=0)
    base.update(kw)
    return DataConfig(**base), ObjectiveConfig(**obj)


def examples_of(batch):
    """{(epoch, doc, index): (input_ids, token types, labels, sampling uniforms at its masked
    positions)} of every example of a batch, read through the batch's own layout (example_starts,
    cu_seqlens, masked_index)."""
    out = {}
    lengths = (batch["cu_seqlens"][1:] - batch["cu_seqlens"][:-1]).tolist()
    flat = {k: batch[k].reshape(-1) for k in ("input_ids", "token_type_ids", "labels")}
    masked = batch["masked_index"]
    assert batch["sample_uniform"].shape == masked.shape
    for k, (start, n) in enumerate(zip(batch["example_starts"].tolist(), lengths)):
        key = (int(batch["epoch"][k]), int(batch["doc_id"][k]), int(batch["example_index"][k]))
        mine = (masked >= start) & (masked < start + n)
        out[key] = tuple(flat[f][start:start + n] for f in flat) + (batch["sample_uniform"][mine],)
    return out


def one_epoch(data, obj, rank=0, world=1):
    return list(build_train_loader(data, obj, rank, world, epochs=1, with_ids=True))


@pytest.mark.parametrize("task", ["sop", "nsp", "none"])
def test_every_example_in_one_row_same_tokens_and_mask_anywhere(data_dir, task):
    packed = [b for r in (0, 1) for b in one_epoch(*cfg(data_dir, sentence_task=task), rank=r, world=2)]
    plain = one_epoch(*cfg(data_dir, sentence_task=task, packing=False))
    seen = collections.Counter()
    got = {}
    for b in packed:
        assert b["input_ids"].shape[1] == SEQ
        ex = examples_of(b)
        seen.update(ex.keys())
        got.update(ex)
        # rows: examples back to back from position 0, no example crosses a row end
        starts, lengths = b["example_starts"], b["cu_seqlens"][1:] - b["cu_seqlens"][:-1]
        assert ((starts % SEQ) + lengths <= SEQ).all()
        assert torch.equal(b["attention_mask"].sum(1), torch.zeros(len(b["input_ids"]), dtype=torch.long).index_add_(
            0, starts // SEQ, lengths.long()))
    assert max(seen.values()) == 1
    if task == "none":   # MLM-only with packing: whole documents, cut at max_seq_len, nothing lost
        tokens = {}
        for (e, d, i), (ids, _, labels, _) in got.items():
            tokens.setdefault(d, {})[i] = torch.where(labels != -100, labels, ids)[1:-1]
        manifest = load_manifest(data_dir)
        for url in manifest.shard_urls("train")[:2]:
            for _, doc, _ in read_item(WorkItem(url, 0, 1, 0, 0)):
                parts = tokens[doc.doc_id]
                whole = torch.cat([parts[i] for i in sorted(parts)])
                assert torch.equal(whole, torch.from_numpy(doc.ids.astype(np.int64))), doc.doc_id
        return
    # with sentence pairs the examples are the unpacked run's, token for token and mask for mask
    reference = {}
    for b in plain:
        reference.update(examples_of(b))
    assert set(got) == set(reference)
    for key, parts in reference.items():
        assert all(torch.equal(x, y) for x, y in zip(got[key], parts)), key


def test_fill_on_short_documents(data_dir):
    """Short documents (the synthetic corpus: 1-12 sentences, many shorter than a row) fill
    >= 95% of the positions packed; unpacked rows are far emptier."""
    fills = {}
    for packing in (True, False):
        data, obj = cfg(data_dir, packing=packing, max_seq_len=128, micro_batch_size=16)
        batches = list(itertools.islice(iter(build_train_loader(data, obj, 0, 1)), 30))
        fills[packing] = float(sum(b["attention_mask"].sum() for b in batches)) / sum(b["input_ids"].numel() for b in batches)
    assert fills[True] >= 0.95 and fills[False] < 0.85, fills


def test_cursor_names_examples_the_packer_emitted_out_of_order(data_dir):
    """Mid-buffer: the cursor points at the oldest unemitted example and excludes the ones emitted
    past it; a loader restored from its JSON continues with the very same batches."""
    data, obj = cfg(data_dir, pack_lookahead=32)
    ld = build_train_loader(data, obj, 0, 1, with_ids=True)
    it = iter(ld)
    found = False
    for _ in range(12):
        next(it)
        cursor = json.loads(json.dumps(merge_cursors([ld.state_dict()])))
        found |= any(len(item) == 7 and item[6] for s in cursor["streams"] for item in s["items"])
    assert found, "no cursor had examples emitted past its position"
    want = [next(it) for _ in range(6)]
    again = build_train_loader(data, obj, 0, 1, with_ids=True)
    again.load_state_dict(cursor)
    got = list(itertools.islice(iter(again), 6))
    for w, g in zip(want, got):
        for k in w:
            assert torch.equal(w[k], g[k]) if isinstance(w[k], torch.Tensor) else w[k] == g[k], k


def _ex(n, i):
    return Example(0, 0, i, np.zeros(n - 2, dtype=np.int64), None, -100)


def test_packer_is_best_fit_oldest_first_and_bounded():
    p = Packer(capacity=10, lookahead=4)
    for i, n in enumerate([6, 5, 4, 3, 2]):
        p.add(_ex(n, i), i)
    row, refs = p.pop_row()
    assert refs == [0, 2]                     # oldest (6) + the largest that fits (4), in order
    assert sum(example_length(e) for e in row) == 10
    row, refs = p.pop_row()
    assert refs == [1, 3, 4]                  # 5 + 3 + 2 = 10
    with pytest.raises(ValueError):
        p.add(_ex(11, 9), 9)
    one = Packer(capacity=10, lookahead=1)
    one.add(_ex(3, 0), 0)
    one.add(_ex(3, 1), 1)
    assert one.pop_row()[1] == [0]            # lookahead 1: one example per row
