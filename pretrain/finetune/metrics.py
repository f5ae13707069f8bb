"""Task metrics (run_glue's table): accuracy, F1, Matthews correlation, Pearson, Spearman, and
entity-level F1 for BIO/IOB2 token labels (the CoNLL-2003 metric).

Small numpy functions instead of scikit-learn/scipy/seqeval: four formulas do not justify three
dependencies, and the tests check them against hand-computed values.
F1 for two classes is the F1 of label id 1 (GLUE's MRPC/QQP convention: the positive class);
for more classes it is the macro average over the classes.
"""
from __future__ import annotations

import math

import numpy as np


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float((pred == gold).mean()) if len(gold) else 0.0


def _f1(tp: float, fp: float, fn: float) -> float:
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def f1(pred: np.ndarray, gold: np.ndarray, num_classes: int, macro: bool = False) -> float:
    """Binary F1 of class 1 for two classes (unless macro), else the macro average over classes."""
    if num_classes == 2 and not macro:
        return _f1(float(((pred == 1) & (gold == 1)).sum()), float(((pred == 1) & (gold != 1)).sum()),
                   float(((pred != 1) & (gold == 1)).sum()))
    scores = [_f1(float(((pred == c) & (gold == c)).sum()), float(((pred == c) & (gold != c)).sum()),
                  float(((pred != c) & (gold == c)).sum())) for c in range(num_classes)]
    return float(np.mean(scores))


def matthews(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    """Matthews correlation, multi-class form (Gorodkin 2004); the binary MCC for two classes."""
    c = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(c, (gold.astype(np.int64), pred.astype(np.int64)), 1)
    t, p = c.sum(axis=1), c.sum(axis=0)
    s, correct = c.sum(), np.trace(c)
    denom = math.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    return 0.0 if denom == 0 else float((correct * s - (t * p).sum()) / denom)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return 0.0 if denom == 0 else float((x * y).sum() / denom)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank (as Spearman's rho needs)."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inverse, ranks)
    return (sums / counts)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(_ranks(x), _ranks(y))


def entities(tags: list[str]) -> set[tuple[int, int, str]]:
    """(start, end, type) spans of BIO/IOB2 tags; an I- after O or after another type starts a span (conlleval)."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, t = tag.partition("-") if "-" in tag else (tag, "", "")
        if prefix in ("B", "S") or prefix == "O" or (prefix in ("I", "E") and t != kind):
            if start is not None:
                spans.add((start, i, kind))
                start, kind = None, None
            if prefix != "O":
                start, kind = i, t
        if prefix in ("S", "E") and start is not None:
            spans.add((start, i + 1, kind))
            start, kind = None, None
    return spans


def is_bio(names: list[str]) -> bool:
    return any(n[:2] in ("B-", "I-") for n in names) and all(n == "O" or n[:2] in ("B-", "I-", "E-", "S-") for n in names)


def entity_f1(pred_seqs: list[list[str]], gold_seqs: list[list[str]]) -> float:
    tp = fp = fn = 0
    for p, g in zip(pred_seqs, gold_seqs):
        ps, gs = entities(p), entities(g)
        tp += len(ps & gs)
        fp += len(ps - gs)
        fn += len(gs - ps)
    return _f1(tp, fp, fn)


def classification_metrics(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> dict[str, float]:
    return {"accuracy": accuracy(pred, gold), "f1": f1(pred, gold, num_classes),
            "matthews": matthews(pred, gold, num_classes)}


def regression_metrics(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    return {"pearson": pearson(pred, gold), "spearman": spearman(pred, gold),
            "mse": float(np.mean((np.asarray(pred, np.float64) - gold) ** 2))}


def token_metrics(pred_seqs: list[np.ndarray], gold_seqs: list[np.ndarray], names: list[str]) -> dict[str, float]:
    """Per-word predictions and gold ids (first WordPiece of each word) -> accuracy and F1."""
    flat_p = np.concatenate(pred_seqs) if pred_seqs else np.zeros(0, np.int64)
    flat_g = np.concatenate(gold_seqs) if gold_seqs else np.zeros(0, np.int64)
    out = {"accuracy": accuracy(flat_p, flat_g)}
    if is_bio(names):
        out["f1"] = entity_f1([[names[i] for i in p] for p in pred_seqs], [[names[i] for i in g] for g in gold_seqs])
    else:
        out["f1"] = f1(flat_p, flat_g, len(names), macro=True)
    return out
