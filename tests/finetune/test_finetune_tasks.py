"""Regression (JSONL), token classification (CoNLL) and pair classification (Parquet) end to end;
early stopping."""
from __future__ import annotations

import json
import os

import pytest

from ft_helpers import evals, run_inprocess, task_overrides
from pretrain.finetune.demo_task import write_task

LEARN = ["trainer.max_steps=120", "trainer.eval_every=40", "model.hidden_dropout=0", "model.attention_dropout=0",
         "method=full", "optim.lr=1e-3"]


def test_regression_from_jsonl(tmp_path, test_backbone):
    files = write_task(tmp_path / "data", "regression", "jsonl", 320, 160, seed=0)
    summary, run_dir = run_inprocess(*task_overrides(files, tmp_path, "reg", test_backbone), "task=regression", *LEARN)
    assert summary["primary_metric"] == "eval/pearson"
    assert summary["best/eval_pearson"] > 0.3, summary["line"]
    assert set(evals(run_dir, "eval/spearman")) == {40, 80, 120}
    assert json.load(open(os.path.join(run_dir, "labels.json"))) == {"regression": True, "names": []}


def test_token_classification_from_conll(tmp_path, test_backbone):
    files = write_task(tmp_path / "data", "ner", "conll", 320, 160, 20, seed=0)
    summary, run_dir = run_inprocess(*task_overrides(files, tmp_path, "ner", test_backbone), "task=conll2003", *LEARN)
    assert summary["primary_metric"] == "eval/f1"
    assert summary["best/eval_f1"] > 0.35, summary["line"]  # entity-level; predicting all O scores 0
    labels = json.load(open(os.path.join(run_dir, "labels.json")))["names"]
    assert labels == ["B-CODE", "I-CODE", "O"]
    with open(os.path.join(run_dir, "test_predictions.jsonl")) as f:
        first = json.loads(f.readline())
    with open(files["test"]) as f:
        words = f.read().split("\n\n")[0].splitlines()
    from pretrain.finetune.model import load_tokenizer

    kept = {w for w in load_tokenizer(test_backbone)([ln.split("\t")[0] for ln in words], is_split_into_words=True,
                                                     truncation=True, max_length=32).word_ids() if w is not None}
    assert first["line"] == 1 and len(first["prediction"]) == len(kept) <= len(words)  # one label per word that fits


def test_pair_classification_from_parquet_and_early_stopping(tmp_path, test_backbone):
    files = write_task(tmp_path / "data", "pair", "parquet", 160, 80, seed=0)
    summary, run_dir = run_inprocess(*task_overrides(files, tmp_path, "pair", test_backbone), "task=pair_classification",
                                     "trainer.max_steps=200", "trainer.eval_every=5", "trainer.early_stopping_patience=2",
                                     "optim.lr=1e-9", "method=bitfit")
    assert summary["stop_reason"].startswith("early stopping")
    assert summary["final_step"] == 15 and summary["best_step"] == 5  # nothing improves on the first validation
    assert sorted(evals(run_dir, "eval/accuracy")) == [5, 10, 15]
    data = json.load(open(os.path.join(run_dir, "data.json")))
    assert data["train"]["rows"] == 160 and data["validation"]["rows"] == 80


@pytest.fixture
def tokenized_pair(tmp_path, test_backbone):
    from pretrain.finetune.data import build_label_map, encode_split, read_split
    from ft_helpers import compose_cfg
    from pretrain.finetune.model import load_tokenizer

    files = write_task(tmp_path / "data", "pair", "tsv", 8, 4, seed=0)
    cfg = compose_cfg(*task_overrides(files, tmp_path, "p", test_backbone), "task=pair_classification")
    rows, report = read_split(files["train"], cfg.task, True)
    return encode_split(rows, report, load_tokenizer(test_backbone), cfg.task, build_label_map(cfg.task, rows), 32)


def test_pairs_are_encoded_as_two_segments(tokenized_pair):
    item = tokenized_pair[0]
    types = item["token_type_ids"].tolist()
    assert types[0] == 0 and types[-1] == 1 and sorted(set(types)) == [0, 1]
    assert types == sorted(types)  # segment A, then segment B


def test_a_demo_task_too_small_for_the_splits_asked_is_one_error_not_an_empty_split(tmp_path):
    """The topic task has a fixed number of stdlib docstring sentences; asking for more used to
    write train only and drop the validation file without a word (bench/finetune.py then failed)."""
    with pytest.raises(ValueError, match=r"demo task 'topic' has \d+ rows on this machine; asked for train=100000"):
        write_task(tmp_path / "data", "topic", "tsv", 100_000, 600, seed=0)
    assert not (tmp_path / "data").exists()
    from pretrain.finetune.demo_task import main

    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "cli"), "--task", "topic", "--train", "100000"])
    assert e.value.code == 2 and not (tmp_path / "cli").exists()
