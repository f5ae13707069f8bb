"""Masking statistics and invariants, on batches from the real loader path."""
import itertools

import numpy as np
import pytest

from pretrain.data import build_train_loader
from pretrain.data.tokens import token_table
from pretrain.shardformat import load_manifest


def batches(make_cfg, n=60, **kw):
    data, obj = make_cfg(**kw)
    return [{k: v.numpy() if hasattr(v, "numpy") else v for k, v in b.items()} for b in itertools.islice(build_train_loader(data, obj, 0, 1), n)]


def originals(b):
    return np.where(b["labels"] != -100, b["labels"], b["input_ids"])


def words(ids_row, real_row, table):
    """Word index per position (-1 for specials) from the original ids."""
    out = np.full(len(ids_row), -1)
    w = -1
    for i, (t, real) in enumerate(zip(ids_row, real_row)):
        if not real or table.is_special[t]:
            continue
        if not table.is_continuation[t] or out[i - 1] == -1:
            w += 1
        out[i] = w
    return out


@pytest.fixture(scope="module")
def table(data_dir):
    return token_table(load_manifest(data_dir))


def test_token_masking_rates_and_specials(make_cfg, table):
    bs = batches(make_cfg, 80)
    sel = mask = rand = keep = maskable = 0
    for b in bs:
        orig = originals(b)
        real = b["attention_mask"] == 1
        chosen = b["labels"] != -100
        assert not (chosen & table.is_special[orig]).any() and not (chosen & ~real).any()
        assert (b["input_ids"][~real] == table.pad_id).all()
        maskable += (real & ~table.is_special[orig]).sum()
        sel += chosen.sum()
        mask += (chosen & (b["input_ids"] == table.mask_id)).sum()
        same = chosen & (b["input_ids"] == orig)
        keep += same.sum()
        rand += (chosen & ~same & (b["input_ids"] != table.mask_id)).sum()
        assert not table.is_special[b["input_ids"][chosen & ~same & (b["input_ids"] != table.mask_id)]].any()
        assert ((b["labels"] != -100).sum(1) >= 1).all()
    assert abs(sel / maskable - 0.15) < 0.01
    assert abs(mask / sel - 0.8) < 0.03 and abs(rand / sel - 0.1) < 0.03 and abs(keep / sel - 0.1) < 0.03


@pytest.mark.parametrize("mode", ["whole_word", "span"])
def test_word_level_masking_never_splits_a_word(make_cfg, table, mode):
    bs = batches(make_cfg, 40, masking=mode)
    sel = maskable = 0
    runs = []
    multi_piece_masked = 0
    for b in bs:
        orig = originals(b)
        for r in range(len(orig)):
            w = words(orig[r], b["attention_mask"][r] == 1, table)
            chosen = b["labels"][r] != -100
            for k in np.unique(w[chosen]):
                assert chosen[w == k].all(), "a word is masked partly"
                multi_piece_masked += (w == k).sum() > 1
            maskable += (w >= 0).sum()
            sel += chosen.sum()
            # lengths (in words) of maximal masked runs
            mw = np.unique(w[chosen])
            runs += [len(g) for g in np.split(mw, np.flatnonzero(np.diff(mw) != 1) + 1) if len(g)]
    assert multi_piece_masked > 20
    assert 0.11 < sel / maskable < 0.16
    mean_run = np.mean(runs)
    if mode == "span":
        assert mean_run > 2.2 and max(runs) >= 5       # Geometric(0.2) clipped at 10: mean ~3.8
    else:
        assert mean_run < 1.5


def test_span_lengths_follow_cap_and_budget(table):
    from pretrain.data.config import ObjectiveConfig
    from pretrain.data.masking import Masker

    def runs(p, cap, n, seed):
        m = Masker(table, ObjectiveConfig(masking="span", span_geometric_p=p, span_max_length=cap), 0, 8)
        chosen = np.zeros(1000, dtype=bool)
        m._spans(chosen, np.ones(1000, dtype=np.int64), n, np.random.default_rng(seed))
        w = np.flatnonzero(chosen)
        return chosen.sum(), [len(g) for g in np.split(w, np.flatnonzero(np.diff(w) != 1) + 1)]

    for seed in range(20):
        assert runs(1e-4, 4, 4, seed) == (4, [4])            # one span, clipped at the cap
        total, rs = runs(1e-4, 4, 12, seed)
        assert total == 12 and max(rs) >= 4 and len(rs) <= 3   # long spans, cut at 4 words
        total, rs = runs(1.0, 10, 12, seed)
        assert total == 12 and max(rs) <= 3                  # p=1: one-word spans
