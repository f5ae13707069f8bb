"""Shard URLs (manifest, brace, glob, pipe:) and tokenizer checks."""
import json
import os
import shutil

import pytest

from pretrain.data import DataError, build_eval_loader, build_train_loader, check_vocab_size
from pretrain.shardformat import load_manifest


def doc_ids(loader):
    return sorted(d for b in loader for d in set(b["doc_id"].tolist()))


@pytest.mark.parametrize("urls", [
    "pipe:cat {root}/train/shard-{{000000..000005}}.tar",
    "{root}/train/shard-{{000000..000002}}.tar::{root}/train/shard-00000[3-5].tar",
])
def test_url_overrides_read_the_same_documents(make_cfg, data_dir, urls):
    data, obj = make_cfg(train_urls=urls.format(root=data_dir), num_workers=1)
    got = set(doc_ids(build_train_loader(data, obj, 0, 1, epochs=1, with_ids=True)))
    assert got == set(range(240))


def test_eval_loader_one_pass_sharded_with_partial_batches(make_cfg):
    data, obj = make_cfg(num_workers=2)
    per_rank = [list(build_eval_loader(data, obj, r, 2, with_ids=True)) for r in (0, 1)]
    ids = [d for bs in per_rank for b in bs for d in b["doc_id"].tolist()]
    assert set(ids) == set(range(240, 280))
    assert any(b["input_ids"].shape[0] < 8 for bs in per_rank for b in bs)
    again = list(build_eval_loader(data, obj, 0, 2, with_ids=True))
    assert len(again) == len(per_rank[0])


def test_tokenizer_mismatch_and_vocab_errors(make_cfg, data_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(data_dir, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["tokenizer"]["sha256"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(m))
    data, obj = make_cfg(path=str(bad))
    with pytest.raises(DataError, match="tokenizer.json.*does not match"):
        build_train_loader(data, obj, 0, 1)
    with pytest.raises(DataError, match="vocab_size"):
        check_vocab_size(load_manifest(data_dir), 100)
    check_vocab_size(load_manifest(data_dir), 2048)
    data, obj = make_cfg(train_urls=os.path.join(data_dir, "nope-*.tar"))
    with pytest.raises(DataError, match="matches no files"):
        build_train_loader(data, obj, 0, 1)


def test_cursor_for_other_shards_is_refused(make_cfg, data_dir):
    from pretrain.data import merge_cursors

    data, obj = make_cfg()
    cursor = merge_cursors([build_train_loader(data, obj, 0, 1).state_dict()])
    data, obj = make_cfg(train_urls=f"{data_dir}/train/shard-00000[0-2].tar")
    with pytest.raises(DataError, match="different shard list"):
        build_train_loader(data, obj, 0, 1).load_state_dict(cursor)


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_shards_are_one_line_errors(make_cfg, tmp_path, workers):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar file")
    for urls, reason in ((str(bad), "truncated header"), (f"pipe:cat {tmp_path}/missing.tar", "exited with status 1|empty file")):
        data, obj = make_cfg(train_urls=urls, num_workers=workers)
        with pytest.raises(DataError, match=reason) as err:
            next(iter(build_train_loader(data, obj, 0, 1)))
        assert "\n" not in str(err.value)
