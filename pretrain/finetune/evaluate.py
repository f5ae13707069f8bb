"""Validation and prediction: model outputs of every process gathered (accelerate's
gather_for_metrics drops the padding samples of the last batch), put back in row order, turned
into predictions, loss and the task's metrics. Every process gets the same numbers, so decisions
taken on them (best model, early stopping) agree without more communication.
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import torch
import torch.nn.functional as F

from . import metrics as M
from .data import IGNORE, LabelMap


@dataclass
class Predictions:
    index: np.ndarray                   # row index in the split, sorted
    logits: np.ndarray                  # [N, C] / [N] (regression) / [N, L, C] (token)
    labels: np.ndarray                  # same leading shape; IGNORE / nan where absent
    predictions: list                   # per row: class id, float, or list of word label ids
    gold: list                          # per row, same form


@torch.no_grad()
def predict(model, loader, accelerator, task_type: str, regression: bool) -> Predictions:
    model.eval()
    token = task_type == "token_classification"
    idx_parts, logit_parts, label_parts = [], [], []
    for batch in loader:
        index = batch.pop("index")
        labels = batch.pop("labels")
        with accelerator.autocast():
            logits = model(**batch).logits.float()
        if token:  # widths differ between processes: pad before gathering
            logits = accelerator.pad_across_processes(logits, dim=1, pad_index=0)
            labels = accelerator.pad_across_processes(labels, dim=1, pad_index=IGNORE)
        index, logits, labels = accelerator.gather_for_metrics((index, logits, labels))
        idx_parts.append(index.cpu().numpy())
        logit_parts.append(logits.cpu().numpy())
        label_parts.append(labels.cpu().numpy())
    if token:  # rows from different batches have different widths: pad to one width
        width = max(p.shape[1] for p in logit_parts)
        logit_parts = [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0))) for p in logit_parts]
        label_parts = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=IGNORE) for p in label_parts]
    index = np.concatenate(idx_parts)
    order = np.argsort(index, kind="stable")
    index, logits, labels = index[order], np.concatenate(logit_parts)[order], np.concatenate(label_parts)[order]
    if regression:
        logits = logits.reshape(len(index))
        return Predictions(index, logits, labels, logits.tolist(), labels.tolist())
    if token:
        pred_ids = logits.argmax(-1)
        keep = labels != IGNORE
        return Predictions(index, logits, labels, [pred_ids[i][keep[i]] for i in range(len(index))],
                           [labels[i][keep[i]] for i in range(len(index))])
    return Predictions(index, logits, labels, logits.argmax(-1).tolist(), labels.tolist())


def loss_of(p: Predictions, regression: bool) -> float:
    if regression:
        return float(np.mean((p.logits.astype(np.float64) - p.labels) ** 2))
    logits = torch.from_numpy(p.logits.reshape(-1, p.logits.shape[-1]))
    labels = torch.from_numpy(p.labels.reshape(-1).astype(np.int64))
    return float(F.cross_entropy(logits, labels, ignore_index=IGNORE))


def score(p: Predictions, task_type: str, labels: LabelMap) -> dict[str, float]:
    """eval/loss and the task's metrics (names without the eval/ prefix)."""
    out = {"loss": loss_of(p, labels.regression)}
    if labels.regression:
        out.update(M.regression_metrics(np.asarray(p.predictions), np.asarray(p.gold)))
    elif task_type == "token_classification":
        out.update(M.token_metrics(p.predictions, p.gold, labels.names))
    else:
        out.update(M.classification_metrics(np.asarray(p.predictions), np.asarray(p.gold), labels.num_labels))
    return out


def readable(p: Predictions, labels: LabelMap, lines: np.ndarray, row: int, task_type: str) -> dict:
    """One prediction as written to test_predictions.jsonl: the source line and the label(s)."""
    pred = p.predictions[row]
    if labels.regression:
        value: object = float(pred)
    elif task_type == "token_classification":
        value = [labels.names[int(i)] for i in pred]
    else:
        value = labels.names[int(pred)]
    return {"line": int(lines[p.index[row]]), "prediction": value}

