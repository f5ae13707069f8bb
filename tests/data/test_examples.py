"""Pair building: SOP/NSP labels, one-sentence documents, packing, determinism."""
import numpy as np

from pretrain.data.examples import ExampleStats, build_examples
from pretrain.data.plan import WorkItem
from pretrain.data.stream import read_item
from pretrain.shardformat import Document, load_manifest


def docs(data_dir):
    for url in load_manifest(data_dir).shard_urls("train"):
        yield from read_item(WorkItem(url, 0, 1, 0, 0))


def find(sub, text) -> np.ndarray:
    """Start indices of sub in text as a contiguous run."""
    win = np.lib.stride_tricks.sliding_window_view(text, len(sub))
    return np.flatnonzero((win == sub).all(1))


def test_sop_pairs_are_consecutive_and_balanced(data_dir):
    labels, stats = [], ExampleStats()
    for _, doc, other in docs(data_dir):
        text = doc.ids.tolist()
        for ex in build_examples(doc, other, 64, 0.1, "sop", 1, 0, stats):
            assert 2 + len(ex.a) + (len(ex.b) + 1 if ex.b is not None else 0) <= 64
            if ex.b is None:
                continue
            first, second = (ex.b, ex.a) if ex.label == 1 else (ex.a, ex.b)
            # un-swapped, A and B are runs of the document, A before B (truncation may trim the
            # inner ends, so they need not touch)
            i, j = find(first, doc.ids), find(second, doc.ids)
            assert len(i) and len(j) and i.min() + len(first) <= j.max(), (i, j)
            labels.append(ex.label)
    assert 0.45 < np.mean(labels) < 0.55 and len(labels) > 500
    assert stats.one_sentence_documents > 0 and stats.midpoint_splits >= stats.one_sentence_documents


def test_nsp_random_b_comes_from_another_document(data_dir):
    labels = []
    for _, doc, other in docs(data_dir):
        own = set(map(tuple, np.lib.stride_tricks.sliding_window_view(doc.ids, 3)))
        for ex in build_examples(doc, other, 64, 0.0, "nsp", 1, 0, ExampleStats()):
            labels.append(ex.label)
            if ex.label == 1 and len(ex.b) >= 3:
                assert other is not None
                grams = set(map(tuple, np.lib.stride_tricks.sliding_window_view(ex.b, 3)))
                assert grams & set(map(tuple, np.lib.stride_tricks.sliding_window_view(other.ids, 3)))
            if ex.label == 0:
                grams = set(map(tuple, np.lib.stride_tricks.sliding_window_view(ex.b, min(3, len(ex.b)))))
                assert len(ex.b) < 3 or grams <= own
    assert 0.4 < np.mean(labels) < 0.7


def test_one_sentence_rules_and_none_task():
    doc = Document(7, np.arange(10, 30, dtype=np.int64), np.array([20]))
    (ex,) = build_examples(doc, None, 64, 0.0, "sop", 1, 0, ExampleStats())
    assert sorted(ex.a.tolist() + ex.b.tolist()) == list(range(10, 30)) and len(ex.a) == len(ex.b) == 10
    tiny = Document(8, np.array([11]), np.array([1]))
    (ex,) = build_examples(tiny, None, 64, 0.0, "sop", 1, 0, ExampleStats())
    assert ex.b is None and ex.label == -100
    (ex,) = build_examples(doc, tiny, 64, 0.0, "nsp", 1, 0, ExampleStats())
    assert ex.label == 1 and ex.b.tolist() == [11]
    (ex,) = build_examples(doc, None, 64, 0.0, "nsp", 1, 0, ExampleStats())
    assert ex.b is None and ex.label == -100
    long = Document(9, np.arange(200, dtype=np.int64), np.array([200]))
    exs = build_examples(long, None, 64, 0.0, "none", 1, 0, ExampleStats())
    assert [e.label for e in exs] == [-100] * len(exs) and sum(len(e.a) for e in exs) == 200


def test_examples_are_deterministic_per_seed_epoch_doc(data_dir):
    _, doc, other = next(docs(data_dir))
    run = lambda seed, epoch: [(e.a.tolist(), None if e.b is None else e.b.tolist(), e.label)
                               for e in build_examples(doc, other, 64, 0.5, "sop", seed, epoch, ExampleStats())]
    assert run(1, 0) == run(1, 0)
    assert run(1, 0) != run(2, 0) or run(1, 0) != run(1, 1)
