"""Task files: every format, GLUE's TSV layouts, bad rows counted or named by file:line, labels
mapped (and saved), token labels on the first WordPiece of each word."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from pretrain.finetune.config import TaskConfig
from pretrain.finetune.data import IGNORE, build_label_map, encode_split, read_split
from pretrain.finetune.readers import TaskDataError, read_rows


def task(**kw):
    return OmegaConf.merge(OmegaConf.structured(TaskConfig), kw)


def write(path, text: str) -> str:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return str(path)


def test_glue_tsv_layouts_with_and_without_header_and_unbalanced_quotes(tmp_path):
    sst = write(tmp_path / "sst.tsv", 'sentence\tlabel\nit \'s a "charming journey\t1\nflat , dull\t0\n')
    rows = list(read_rows(sst, task(text_column="sentence")))
    assert [(r.line, r.text, r.label) for r in rows] == [(2, 'it \'s a "charming journey', "1"), (3, "flat , dull", "0")]
    cola = write(tmp_path / "cola.tsv", "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n")
    rows = list(read_rows(cola, task(header=False, text_column=3, label_column=1)))
    assert [(r.line, r.text, r.label) for r in rows] == [(1, "Our friends won't buy this analysis.", "1"), (2, "They drank the pub.", "0")]
    mrpc = write(tmp_path / "mrpc.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t7\t8\tA b.\tA c.\n")
    (row,) = read_rows(mrpc, task(type="pair_classification", text_column="#1 String", text_pair_column="#2 String", label_column="Quality"))
    assert (row.text, row.text_pair, row.label) == ("A b.", "A c.", "1")


def test_csv_jsonl_parquet_give_the_same_rows(tmp_path):
    csv_path = write(tmp_path / "t.csv", 'text,label\n"a, quoted ""text""",pos\nplain,neg\n')
    jsonl = write(tmp_path / "t.jsonl", json.dumps({"text": 'a, quoted "text"', "label": "pos"}) + "\n"
                  + json.dumps({"text": "plain", "label": "neg"}) + "\n")
    parquet = str(tmp_path / "t.parquet")
    pq.write_table(pa.Table.from_pylist([{"text": 'a, quoted "text"', "label": "pos"}, {"text": "plain", "label": "neg"}]), parquet)
    got = [[(r.text, r.label) for r in read_rows(p, task())] for p in (csv_path, jsonl, parquet)]
    assert got[0] == got[1] == got[2] == [('a, quoted "text"', "pos"), ("plain", "neg")]


def test_bad_rows_are_counted_or_named_by_file_and_line(tmp_path):
    path = write(tmp_path / "bad.tsv", b"text\tlabel\ngood one\t1\nno label column\n\t1\nanother\t\nbad \xff bytes\t0\nfine\t0\n")
    rows, report = read_split(path, task(), require_labels=True)
    assert [r.text for r in rows] == ["good one", "fine"]
    assert dict(report.skipped) == {"short_row": 1, "empty_text": 1, "missing_label": 1, "invalid_utf8": 1}
    with pytest.raises(TaskDataError, match=r"bad\.tsv:3: short row"):
        read_split(path, task(on_bad_row="error"), require_labels=True)
    jsonl = write(tmp_path / "bad.jsonl", '{"text": "ok", "label": 1}\n{not json\n{"text": 3, "label": 1}\n')
    _, report = read_split(jsonl, task(), require_labels=True)
    assert dict(report.skipped) == {"invalid_json": 1, "wrong_type": 1}
    with pytest.raises(TaskDataError, match=r"bad\.jsonl:2: invalid json"):
        read_split(jsonl, task(on_bad_row="error"), require_labels=True)


def test_file_level_problems_are_errors(tmp_path):
    pair_file = write(tmp_path / "p.tsv", "sentence1\tlabel\na\t1\n")
    with pytest.raises(TaskDataError, match=r"p\.tsv: no column 'sentence2' .*columns: sentence1, label"):
        list(read_rows(pair_file, task(type="pair_classification", text_column="sentence1", text_pair_column="sentence2")))
    with pytest.raises(TaskDataError, match="no such file"):
        list(read_rows(str(tmp_path / "missing.tsv"), task()))
    with pytest.raises(TaskDataError, match="task.header=false"):
        list(read_rows(pair_file, task(header=False, text_column="sentence1")))
    with pytest.raises(TaskDataError, match="no usable rows"):
        read_split(write(tmp_path / "empty.tsv", "text\tlabel\n\tx\n"), task(), require_labels=True)


def test_label_map_sorted_ints_then_strings_and_unknown_validation_label_is_an_error(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    t = task()
    train = write(tmp_path / "train.tsv", "text\tlabel\na\t10\nb\t2\nc\t2\n")
    rows, _ = read_split(train, t, require_labels=True)
    assert build_label_map(t, rows).names == ["2", "10"]
    val = write(tmp_path / "val.tsv", "text\tlabel\na\t2\nb\t7\n")
    vrows, report = read_split(val, t, require_labels=True)
    with pytest.raises(TaskDataError, match=r"val\.tsv:3: label '7' is not one of the training labels \['2', '10'\]"):
        encode_split(vrows, report, tok, t, build_label_map(t, rows), 32)
    strings = write(tmp_path / "s.tsv", "text\tlabel\na\tpos\nb\tneg\n")
    srows, _ = read_split(strings, t, require_labels=True)
    assert build_label_map(t, srows).names == ["neg", "pos"]
    fixed = task(labels=["pos", "neg", "neutral"])
    assert build_label_map(fixed, srows).names == ["pos", "neg", "neutral"]


def test_conll_labels_go_to_the_first_wordpiece(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    path = write(tmp_path / "t.conll", "-DOCSTART- -X- O O\n\nthe DT B-NP O\nzzyzxvocabularyword NN I-NP B-X\n\n"
                                     "call VB O O\nos.path.join() NN O B-CODE\nnow RB O O\nbroken\n\n")
    t = task(type="token_classification", format="auto", header=False, text_column=0, label_column=-1)
    rows, report = read_split(path, t, require_labels=True)
    assert [r.text for r in rows] == [["the", "zzyzxvocabularyword"]] and dict(report.skipped) == {"missing_label": 1}
    labels = build_label_map(t, rows)
    assert labels.names == ["B-X", "O"]
    enc = encode_split(rows, report, tok, t, labels, 32)
    item = enc[0]
    word_ids = tok(["the", "zzyzxvocabularyword"], is_split_into_words=True).word_ids()
    assert len(item["input_ids"]) == len(word_ids) and word_ids.count(1) > 1  # the long word is several pieces
    expected = [IGNORE if w is None or (k > 0 and word_ids[k - 1] == w) else [1, 0][w] for k, w in enumerate(word_ids)]
    assert item["labels"].tolist() == expected
    assert np.count_nonzero(item["labels"] != IGNORE) == 2
