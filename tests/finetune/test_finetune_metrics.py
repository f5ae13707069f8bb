"""Task metrics against values computed by hand (and the published definitions)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pretrain.finetune import metrics as M


def test_accuracy_binary_f1_and_matthews_by_hand():
    gold = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    pred = np.array([1, 1, 0, 0, 0, 1, 0, 1])
    tp, fp, fn, tn = 3, 1, 1, 3
    assert M.accuracy(pred, gold) == pytest.approx(6 / 8)
    assert M.f1(pred, gold, 2) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert M.matthews(pred, gold, 2) == pytest.approx(mcc)
    assert M.matthews(np.zeros(8, int), gold, 2) == 0.0  # a constant predictor: 0, not a division by zero


def test_multiclass_macro_f1_and_matthews():
    gold = np.array([0, 1, 2, 2, 1, 0])
    pred = np.array([0, 2, 2, 2, 1, 1])
    f1s = [2 * 1 / (2 * 1 + 0 + 1), 2 * 1 / (2 * 1 + 1 + 1), 2 * 2 / (2 * 2 + 1 + 0)]
    assert M.f1(pred, gold, 3) == pytest.approx(np.mean(f1s))
    assert M.matthews(gold, gold, 3) == pytest.approx(1.0)
    assert -1.0 <= M.matthews(pred, gold, 3) <= 1.0


def test_pearson_and_spearman_with_ties():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert M.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert M.spearman(x, x ** 3) == pytest.approx(1.0)  # monotone, not linear
    assert M.pearson(x, x ** 3) < 1.0
    # ties get average ranks: ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]
    assert M._ranks(np.array([1, 2, 2, 3])).tolist() == [0.0, 1.5, 1.5, 3.0]
    a, b = np.array([1, 2, 2, 3.0]), np.array([1, 3, 2, 4.0])
    assert M.spearman(a, b) == pytest.approx(M.pearson(np.array([1, 2.5, 2.5, 4]), np.array([1, 3, 2, 4.0])))


def test_entity_f1_follows_conlleval():
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    assert M.is_bio(names) and not M.is_bio(["NOUN", "VERB"])
    assert M.entities(["B-PER", "I-PER", "O", "B-LOC", "I-PER"]) == {(0, 2, "PER"), (3, 4, "LOC"), (4, 5, "PER")}
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "O", "O", "B-LOC"]]  # PER span cut short: wrong; LOC right
    assert M.entity_f1(pred, gold) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    out = M.token_metrics([np.array([1, 0, 0, 3])], [np.array([1, 2, 0, 3])], names)
    assert out["accuracy"] == pytest.approx(0.75) and out["f1"] == pytest.approx(0.5)
