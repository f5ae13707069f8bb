"""Task splits: rows -> label ids -> WordPiece ids in flat arrays -> padded batches.

A split is held as a few flat numpy arrays (ids, token types, token labels) plus offsets, about
5-9 bytes per token, so even MNLI-sized sets (400k pairs) take a few hundred MB at most; the raw
text is dropped once tokenized. Each batch is padded to its own longest row (dynamic padding).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .readers import BAD_LABEL, MISSING_LABEL, Row, TaskDataError, read_rows

IGNORE = -100          # label id ignored by the loss (non-first WordPieces, padding, absent labels)
UNLABELLED_WORD = -1   # token tasks: a word's first WordPiece whose label is absent (test files)
ENCODE_BATCH = 1000    # rows per tokenizer call
LABELS_FILE = "labels.json"


@dataclass
class LabelMap:
    """Label strings <-> ids. `names` is empty for regression (labels are numbers)."""

    regression: bool
    names: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.names)

    def to_json(self) -> dict:
        return {"regression": self.regression, "names": self.names}

    @classmethod
    def from_json(cls, obj: dict) -> "LabelMap":
        return cls(bool(obj["regression"]), [str(n) for n in obj["names"]])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def _sort_labels(labels: set[str]) -> list[str]:
    """Integers numerically (GLUE's 0/1), anything else alphabetically: the same ids whatever the row order."""
    try:
        return [str(x) for x in sorted(labels, key=int)]
    except ValueError:
        return sorted(labels)


def build_label_map(task, train_rows: list[Row]) -> LabelMap:
    if task.type == "regression":
        return LabelMap(True)
    if task.labels is not None:
        return LabelMap(False, [str(x) for x in task.labels])
    seen: set[str] = set()
    for row in train_rows:
        seen.update(row.label if isinstance(row.label, list) else [row.label])
    seen.discard(None)
    names = _sort_labels(seen)
    if len(names) < 2:
        raise TaskDataError(f"{task.train}: the training labels are {names}; a classification task needs at least two")
    return LabelMap(False, names)


@dataclass
class SplitReport:
    path: str
    rows: int = 0
    skipped: Counter = field(default_factory=Counter)
    truncated: int = 0            # rows cut at max_seq_len (token tasks: words lost past it)

    def line(self, name: str) -> str:
        skips = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        extra = f", {sum(self.skipped.values())} skipped ({skips})" if self.skipped else ""
        return f"{name}: {self.rows} rows from {self.path}{extra}, {self.truncated} truncated"


def read_split(path: str, task, require_labels: bool) -> tuple[list[Row], SplitReport]:
    """All usable rows of one file; bad rows counted (on_bad_row=skip) or raised (error)."""
    report = SplitReport(path)
    rows: list[Row] = []
    for row in read_rows(path, task):
        if row.skip is None and require_labels and _lacks_label(row):
            row = Row(row.line, skip=MISSING_LABEL)
        if row.skip is not None:
            if task.on_bad_row == "error":
                raise TaskDataError(f"{path}:{row.line}: {row.skip.replace('_', ' ')} (task.on_bad_row=skip counts such rows instead)")
            report.skipped[row.skip] += 1
            continue
        rows.append(row)
    if not rows:
        raise TaskDataError(f"{path}: no usable rows" + (f" (skipped: {dict(report.skipped)})" if report.skipped else ""))
    report.rows = len(rows)
    return rows, report


def _lacks_label(row: Row) -> bool:
    if isinstance(row.label, list):
        return any(x is None for x in row.label)
    return row.label is None


class EncodedSplit(torch.utils.data.Dataset):
    """Tokenized rows in flat arrays. Item i: ids/types/labels of row i and its source line."""

    def __init__(self, ids, types, token_labels, offsets, labels, lines, has_labels: bool):
        self.ids, self.types, self.token_labels, self.offsets = ids, types, token_labels, offsets
        self.labels, self.lines, self.has_labels = labels, lines, has_labels

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict:
        a, b = self.offsets[i], self.offsets[i + 1]
        item = {"input_ids": self.ids[a:b], "token_type_ids": self.types[a:b], "index": i}
        item["labels"] = self.token_labels[a:b] if self.token_labels is not None else self.labels[i]
        return item


def _label_value(row: Row, label_map: LabelMap, task, path: str):
    """Row label -> id (float for regression); unknown class labels are an error naming file:line."""
    def one(x):
        if x is None:
            return float("nan") if label_map.regression else (UNLABELLED_WORD if isinstance(row.label, list) else IGNORE)
        if label_map.regression:
            return float(x)
        if x not in label_map.names:
            hint = "set task.labels to the full label list" if task.labels is None else "it is not in task.labels"
            raise TaskDataError(f"{path}:{row.line}: label {x!r} is not one of the training labels {label_map.names} ({hint})")
        return label_map.names.index(x)

    return [one(x) for x in row.label] if isinstance(row.label, list) else one(row.label)


def encode_split(rows: list[Row], report: SplitReport, tokenizer, task, label_map: LabelMap, max_len: int) -> EncodedSplit:
    """Tokenize rows (batched, fast tokenizer), truncating to max_len; labels mapped to ids."""
    token_task = task.type == "token_classification"
    ids_parts, type_parts, tlabel_parts, lengths, labels, lines = [], [], [], [], [], []
    usable: list[Row] = []
    for row in rows:  # regression labels that are not numbers: counted or raised like other bad rows
        if label_map.regression and row.label is not None:
            try:
                float(row.label)
            except ValueError:
                if task.on_bad_row == "error":
                    raise TaskDataError(f"{report.path}:{row.line}: label {row.label!r} is not a number") from None
                report.skipped[BAD_LABEL] += 1
                continue
        usable.append(row)
    if not usable:
        raise TaskDataError(f"{report.path}: no usable rows (skipped: {dict(report.skipped)})")
    report.rows = len(usable)
    has_labels = all(not _lacks_label(r) for r in usable)
    for start in range(0, len(usable), ENCODE_BATCH):
        chunk = usable[start:start + ENCODE_BATCH]
        if token_task:
            enc = tokenizer([r.text for r in chunk], is_split_into_words=True, truncation=True, max_length=max_len)
        elif task.text_pair_column is not None:
            enc = tokenizer([r.text for r in chunk], [r.text_pair for r in chunk], truncation="longest_first", max_length=max_len)
        else:
            enc = tokenizer([r.text for r in chunk], truncation=True, max_length=max_len)
        for j, row in enumerate(chunk):
            ids = enc["input_ids"][j]
            ids_parts.append(np.asarray(ids, dtype=np.int32))
            types = enc["token_type_ids"][j] if "token_type_ids" in enc else [0] * len(ids)
            type_parts.append(np.asarray(types, dtype=np.int8))
            lengths.append(len(ids))
            lines.append(row.line)
            if token_task and row.label is None:
                value = [UNLABELLED_WORD] * len(row.text)
            else:
                value = _label_value(row, label_map, task, report.path)
            if token_task:
                tlabel_parts.append(_align_word_labels(enc.word_ids(j), value))
                kept = {w for w in enc.word_ids(j) if w is not None}
                report.truncated += int(len(kept) < len(row.text))
            else:
                labels.append(value)
                report.truncated += int(len(ids) >= max_len)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    label_array = None if token_task else np.asarray(labels, dtype=np.float32 if label_map.regression else np.int64)
    return EncodedSplit(np.concatenate(ids_parts), np.concatenate(type_parts),
                        np.concatenate(tlabel_parts) if token_task else None, offsets,
                        label_array, np.asarray(lines, dtype=np.int64), has_labels)


def _align_word_labels(word_ids: list[Optional[int]], word_labels: list[int]) -> np.ndarray:
    """The label of each word on its first WordPiece; IGNORE on the other pieces and specials."""
    out = np.full(len(word_ids), IGNORE, dtype=np.int64)
    previous = None
    for k, w in enumerate(word_ids):
        if w is not None and w != previous:
            out[k] = word_labels[w]
        previous = w
    return out


class Collator:
    """Pad a list of items to the longest; attention_mask marks real tokens."""

    def __init__(self, pad_id: int, regression: bool, token_types: bool = True):
        self.pad_id = pad_id
        self.regression = regression
        self.token_types = token_types  # False: the model takes no token_type_ids (ModernBERT)

    def __call__(self, items: list[dict]) -> dict:
        n, width = len(items), max(len(it["input_ids"]) for it in items)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        types = torch.zeros((n, width), dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        token_level = isinstance(items[0]["labels"], np.ndarray)
        labels = torch.full((n, width), IGNORE, dtype=torch.long) if token_level else None
        for k, it in enumerate(items):
            length = len(it["input_ids"])
            ids[k, :length] = torch.from_numpy(it["input_ids"].astype(np.int64))
            types[k, :length] = torch.from_numpy(it["token_type_ids"].astype(np.int64))
            mask[k, :length] = 1
            if token_level:
                labels[k, :length] = torch.from_numpy(it["labels"])
        if not token_level:
            dtype = torch.float32 if self.regression else torch.long
            labels = torch.tensor([it["labels"] for it in items], dtype=dtype)
        batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": labels,
                 "index": torch.tensor([it["index"] for it in items], dtype=torch.long)}
        if not self.token_types:
            del batch["token_type_ids"]
        return batch
