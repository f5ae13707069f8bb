"""Every kind of bad input is a clear error naming the file (and line) or a counted skip."""
from __future__ import annotations

import bz2
import gzip
import json

import pytest

from pretrain.prepare.config import PrepareError

GOOD = "The quick brown fox jumps over the lazy dog. It was not amused."


def _skips(manifest) -> dict:
    out: dict = {}
    for split in manifest["splits"].values():
        for k, v in split["skipped"].items():
            out[k] = out.get(k, 0) + v
    return out


def _docs(manifest) -> int:
    return sum(s["documents"] for s in manifest["splits"].values())


CASES = {
    # name: (file name, bytes, expected skip reason, overrides)
    "invalid_utf8_text": ("a.txt", f"{GOOD}\n\nbad \xff\xfe bytes here.\n\n{GOOD}\n".encode("latin-1"), "invalid_utf8", {}),
    "invalid_utf8_jsonl": ("a.jsonl", json.dumps({"text": GOOD}).encode() + b'\n{"text": "bad \xff"}\n', "invalid_utf8", {}),
    "empty_document": ("a.jsonl", (json.dumps({"text": GOOD}) + "\n" + json.dumps({"text": "  \n "}) + "\n").encode(), "empty_document", {}),
    "empty_after_tokenizing": ("a.jsonl", (json.dumps({"text": GOOD}) + "\n" + json.dumps({"text": "\u200b\u0000"}) + "\n").encode(), "empty_document", {}),
    "invalid_json": ("a.jsonl", (json.dumps({"text": GOOD}) + "\n{not json\n").encode(), "invalid_json", {}),
    "missing_field": ("a.jsonl", (json.dumps({"text": GOOD}) + "\n" + json.dumps({"body": GOOD}) + "\n").encode(), "missing_field", {}),
    "field_not_string": ("a.jsonl", (json.dumps({"text": GOOD}) + "\n" + json.dumps({"text": 42}) + "\n").encode(), "field_not_string", {}),
    # A document over max_document_chars is cut into pieces (test_long_documents.py); only a run without
    # whitespace longer than that cannot be cut. Here the whole document is one such run.
    "unsplittable_line": ("a.txt", (GOOD + "\n\n" + "x" * 3_000_000 + "\n\n" + GOOD + "\n").encode(), "unsplittable_run", {"max_document_chars": 1000}),
    "unsplittable_jsonl": ("a.jsonl", (json.dumps({"text": GOOD}) + "\n" + json.dumps({"text": "y" * 100_000}) + "\n").encode(), "unsplittable_run", {"max_document_chars": 1000}),
    "line_too_long_jsonl": ("a.jsonl", (json.dumps({"text": GOOD}) + "\n" + json.dumps({"text": GOOD * 40}) + "\n").encode(), "line_too_long", {"max_jsonl_line_bytes": 1000}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_record_is_counted(case, tmp_path, prepare):
    name, data, reason, overrides = CASES[case]
    path = tmp_path / name
    path.write_bytes(data)
    manifest, _ = prepare([path], **overrides)
    skips = _skips(manifest)
    assert skips == {reason: 1}
    assert manifest["inputs"][0]["skipped"] == {reason: 1}
    assert _docs(manifest) + 1 == manifest["inputs"][0]["records"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_strict_mode_names_file_and_line(case, tmp_path, prepare):
    name, data, reason, overrides = CASES[case]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(PrepareError, match=rf"{name}:\d+: {reason.replace('_', ' ')}"):
        prepare([path], on_bad_record="error", **overrides)


def test_invalid_utf8_replace_policy_keeps_the_document(tmp_path, prepare):
    path = tmp_path / "a.txt"
    path.write_bytes(CASES["invalid_utf8_text"][1])
    manifest, _ = prepare([path], invalid_utf8="replace")
    assert _skips(manifest) == {} and _docs(manifest) == 3


def test_truncated_gzip_is_an_error_naming_the_file(tmp_path, prepare):
    data = gzip.compress(("\n\n".join([GOOD] * 2000)).encode())
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PrepareError, match=r"cut\.txt\.gz: truncated or corrupt"):
        prepare([path])


@pytest.mark.parametrize("pattern, message", [
    ("missing.txt", r"missing\.txt: no such file"),
    ("nothing-*.jsonl", r"nothing-\*\.jsonl: glob matches no files"),
    ("data.csv", r"cannot tell the format"),
])
def test_bad_input_paths(pattern, message, tmp_path, prepare):
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(PrepareError, match=message):
        prepare([tmp_path / pattern])


def test_compressed_parquet_and_line_formats(tmp_path, prepare):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    docs = [f"Document number {i}. It has two sentences." for i in range(30)]
    (tmp_path / "a.txt.bz2").write_bytes(bz2.compress("\n\n".join(docs[:10]).encode()))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"content": d}) + "\n" for d in docs[10:20]).encode()))
    pq.write_table(pa.table({"content": docs[20:30] + [None]}), tmp_path / "c.parquet", row_group_size=4)
    (tmp_path / "d.text").write_text("\n".join(docs[:5]) + "\n\n")
    manifest, _ = prepare([tmp_path / "a.txt.bz2", tmp_path / "b.jsonl.zst", tmp_path / "c.parquet"],
                          format__text_field="content")
    assert [i["documents"] for i in manifest["inputs"]] == [10, 10, 10]
    assert manifest["inputs"][2]["skipped"] == {"missing_field": 1}
    manifest, _ = prepare([tmp_path / "d.text"], output=tmp_path / "lines", format__text_documents="line")
    assert manifest["inputs"][0]["documents"] == 5
    assert manifest["splits"]["train"]["one_sentence_documents"] == 0
