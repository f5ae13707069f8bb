"""Task files -> rows (text, optional text pair, raw label) or counted skips, with file:line.

Formats: CSV, TSV (GLUE's files as distributed: tab-separated, no quoting, header or not),
JSONL, Parquet (read in row batches), and CoNLL (one word per line, columns split on whitespace,
a blank line ends a sentence, `-DOCSTART-` lines ignored). `.gz` files are read as streams.
Every row keeps the 1-based line (row, for Parquet) it started at, so a strict run names
`file:line` and a lenient one counts the skip under a reason, as pretrain-prepare does.
Problems with the file as a whole (missing, a column that is not there) are always errors.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import sys
from dataclasses import dataclass
from typing import Iterator, Optional, Union

# Skip reasons (reported per split and saved to <run>/data.json).
SHORT_ROW = "short_row"               # fewer fields than the configured columns need
EMPTY_TEXT = "empty_text"
MISSING_LABEL = "missing_label"       # empty label cell / key absent, where labels are required
BAD_LABEL = "bad_label"               # regression label that is not a number
INVALID_JSON = "invalid_json"
WRONG_TYPE = "wrong_type"             # JSON field of the wrong type (text not a string, words not a list)
LENGTH_MISMATCH = "length_mismatch"   # token task: words and labels of different lengths
INVALID_UTF8 = "invalid_utf8"
MALFORMED_ROW = "malformed_row"       # the csv module could not parse it (e.g. field over the size limit)

FORMAT_BY_EXT = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet",
                 ".conll": "conll", ".iob": "conll", ".bio": "conll", ".txt": "conll"}


class TaskDataError(ValueError):
    """A user-caused problem with a task file (reported in one line naming file[:line])."""


@dataclass(frozen=True)
class Row:
    line: int
    text: Union[str, list, None] = None       # str; list of words for token classification
    text_pair: Optional[str] = None
    label: Union[str, list, None] = None      # raw label as text (list for token tasks); None = absent
    skip: Optional[str] = None


def detect_format(path: str, configured: str) -> str:
    if configured != "auto":
        return configured
    stem, ext = os.path.splitext(path.lower())
    if ext == ".gz":
        ext = os.path.splitext(stem)[1]
    fmt = FORMAT_BY_EXT.get(ext)
    if fmt is None:
        raise TaskDataError(f"{path}: cannot tell the format from {ext!r} (known: {', '.join(FORMAT_BY_EXT)}); set task.format")
    return fmt


def _open_text(path: str):
    if not os.path.isfile(path):
        raise TaskDataError(f"{path}: no such file")
    try:
        raw = gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")
    except OSError as e:
        raise TaskDataError(f"{path}: cannot open ({e.strerror})") from None
    # surrogateescape: undecodable bytes survive as lone surrogates, so one bad row is counted, not the file refused.
    return io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")


def _bad_utf8(*values) -> bool:
    for v in values:
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


class _Columns:
    """Resolve configured columns (names need a header; ints are 0-based indices, -1 = last)."""

    def __init__(self, path: str, header: Optional[list[str]], wanted: dict[str, object]):
        self.index: dict[str, Optional[int]] = {}
        for role, col in wanted.items():
            if col is None:
                self.index[role] = None
            elif isinstance(col, int):
                self.index[role] = col
            elif header is None:
                raise TaskDataError(f"{path}: task.{role}={col!r} is a column name but task.header=false; give a 0-based index")
            elif col not in header:
                raise TaskDataError(f"{path}: no column {col!r} for task.{role} (columns: {', '.join(header)})")
            else:
                self.index[role] = header.index(col)
        used = [i for i in self.index.values() if i is not None]
        self.needed = max((i if i >= 0 else -i - 1 for i in used), default=0) + 1

    def get(self, fields: list[str], role: str) -> Optional[str]:
        i = self.index[role]
        return None if i is None else fields[i]


def read_delimited(path: str, task, fmt: str) -> Iterator[Row]:
    delimiter = "\t" if fmt == "tsv" else ","
    quoting = task.quoting if task.quoting != "auto" else ("none" if fmt == "tsv" else "standard")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL)
        header = None
        if task.header:
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise TaskDataError(f"{path}: empty file (task.header=true expects a header row)") from None
        cols = _Columns(path, header, {"text_column": task.text_column, "text_pair_column": task.text_pair_column,
                                       "label_column": task.label_column})
        start = reader.line_num + 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error:
                yield Row(start, skip=MALFORMED_ROW)
                start = reader.line_num + 1
                continue
            line, start = start, reader.line_num + 1
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            if len(fields) < cols.needed:
                yield Row(line, skip=SHORT_ROW)
                continue
            text, pair, label = (cols.get(fields, r) for r in ("text_column", "text_pair_column", "label_column"))
            yield _checked(line, text, pair, label)


def _checked(line: int, text, pair, label) -> Row:
    if _bad_utf8(text, pair, label):
        return Row(line, skip=INVALID_UTF8)
    if text is None or not str(text).strip() or (pair is not None and not str(pair).strip()):
        return Row(line, skip=EMPTY_TEXT)
    label = None if label is None or str(label).strip() == "" else str(label).strip()
    return Row(line, text=str(text), text_pair=None if pair is None else str(pair), label=label)


def _json_label(value) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    return str(value)


def read_jsonl(path: str, task) -> Iterator[Row]:
    token_task = task.type == "token_classification"
    with _open_text(path) as f:
        for line, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            if _bad_utf8(raw):
                yield Row(line, skip=INVALID_UTF8)
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                yield Row(line, skip=INVALID_JSON)
                continue
            if not isinstance(obj, dict):
                yield Row(line, skip=WRONG_TYPE)
                continue
            yield _from_record(line, obj, task, token_task)


def _from_record(line: int, obj: dict, task, token_task: bool) -> Row:
    if task.text_column not in obj or (task.text_pair_column is not None and task.text_pair_column not in obj):
        return Row(line, skip=SHORT_ROW)
    text, label = obj[task.text_column], obj.get(task.label_column)
    if token_task:
        if not isinstance(text, list) or not all(isinstance(w, str) for w in text):
            return Row(line, skip=WRONG_TYPE)
        if not text:
            return Row(line, skip=EMPTY_TEXT)
        if label is None:
            return Row(line, text=list(text))
        if not isinstance(label, list):
            return Row(line, skip=WRONG_TYPE)
        if len(label) != len(text):
            return Row(line, skip=LENGTH_MISMATCH)
        return Row(line, text=list(text), label=[_json_label(x) for x in label])
    pair = obj.get(task.text_pair_column) if task.text_pair_column is not None else None
    if not isinstance(text, str) or (pair is not None and not isinstance(pair, str)):
        return Row(line, skip=WRONG_TYPE)
    return _checked(line, text, pair, _json_label(label))


def read_parquet(path: str, task) -> Iterator[Row]:
    import pyarrow.parquet as pq

    if not os.path.isfile(path):
        raise TaskDataError(f"{path}: no such file")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # ArrowInvalid / OSError for files that are not parquet
        raise TaskDataError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
    names = pf.schema_arrow.names
    wanted = [c for c in (task.text_column, task.text_pair_column) if c is not None]
    for col in wanted:
        if col not in names:
            raise TaskDataError(f"{path}: no column {col!r} (columns: {', '.join(names)})")
    columns = wanted + ([task.label_column] if task.label_column in names else [])
    token_task = task.type == "token_classification"
    row = 0
    for batch in pf.iter_batches(batch_size=1024, columns=columns):
        for obj in batch.to_pylist():
            row += 1
            yield _from_record(row, obj, task, token_task)


def read_conll(path: str, task) -> Iterator[Row]:
    word_col, label_col = int(task.text_column), int(task.label_column)
    needed = max(i if i >= 0 else -i - 1 for i in (word_col, label_col)) + 1
    words: list[str] = []
    labels: list[Optional[str]] = []
    start, bad = 0, None

    def flush():
        if bad is not None:
            return Row(start, skip=bad)
        has_labels = all(lab is not None for lab in labels)
        return Row(start, text=list(words), label=list(labels) if has_labels else None)

    with _open_text(path) as f:
        for line, raw in enumerate(f, 1):
            fields = raw.split()
            if not fields or fields[0] == "-DOCSTART-":
                if words or bad:
                    yield flush()
                words, labels, bad = [], [], None
                continue
            if not words and bad is None:
                start = line
            if _bad_utf8(raw):
                bad = bad or INVALID_UTF8
                continue
            if len(fields) == 1 and word_col in (0, -1):
                words.append(fields[0])  # a word without a label (e.g. a test file of words only)
                labels.append(None)
                continue
            if len(fields) < needed:
                bad = bad or SHORT_ROW
                continue
            words.append(fields[word_col])
            labels.append(fields[label_col])
    if words or bad:
        yield flush()


def read_rows(path: str, task) -> Iterator[Row]:
    """Rows of one task file in file order (see the module docstring)."""
    fmt = detect_format(path, task.format)
    token_task = task.type == "token_classification"
    if token_task and fmt in ("csv", "tsv"):
        raise TaskDataError(f"{path}: {fmt} files cannot hold token labels; use CoNLL, JSONL or Parquet")
    if fmt == "conll" and not token_task:
        raise TaskDataError(f"{path}: CoNLL files are for task.type=token_classification (this task is {task.type})")
    if fmt in ("csv", "tsv"):
        return read_delimited(path, task, fmt)
    if fmt == "jsonl":
        return read_jsonl(path, task)
    if fmt == "parquet":
        return read_parquet(path, task)
    return read_conll(path, task)
