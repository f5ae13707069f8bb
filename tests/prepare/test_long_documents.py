"""Long documents are cut into pieces, not dropped: every token reaches a shard, and the manifest counts it."""
from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import random
import re
import tracemalloc

import numpy as np
import pytest

from pretrain.prepare.config import FormatConfig, PrepareError
from pretrain.prepare.pieces import LOOKAHEAD, WHITESPACE, PieceCutter
from pretrain.prepare.sentences import sentence_ends, split_sentences
from pretrain.shardformat import decode_document, load_manifest

GOOD = "The quick brown fox jumps over the lazy dog. It was not amused."


@pytest.fixture(scope="module")
def long_text() -> str:
    """One ~1.5 MB document of real English (CPython docs/docstrings, generated here, never committed)."""
    from pretrain.prepare.demo_corpus import demo_documents

    parts, size = [], 0
    for doc in demo_documents():
        parts.append(doc)
        size += len(doc) + 1
        if size >= 1_500_000:
            break
    text = "\n".join(parts)  # paragraphs on consecutive lines: one document in a .txt file too
    assert len(text) >= 1_500_000 and "\n\n" not in text
    return text


@pytest.fixture(scope="module")
def tok(prepared_demo):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(prepared_demo, "tokenizer.json"))


@pytest.fixture(scope="module")
def long_ids(tok, long_text) -> list[int]:
    """The document tokenized whole, as the user would (~2 s: tokenizers is slow on one huge string)."""
    return tok.encode(long_text, add_special_tokens=False).ids


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def _documents(out: str) -> dict[int, np.ndarray]:
    """doc id -> token ids, over all shards of all splits (read back with webdataset)."""
    import webdataset as wds

    m = load_manifest(out)
    docs = {}
    for split in m.splits:
        for url in m.shard_urls(split):
            for sample in wds.WebDataset(url, shardshuffle=False):
                d = decode_document(sample)
                docs[d.doc_id] = np.asarray(d.ids)
    return docs


def _write(path, fmt: str, texts: list[str]) -> str:
    if fmt == "txt":
        path.write_text("".join(t + "\n\n" for t in texts), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": texts}), path)
    return path


def _split_counts(m: dict) -> tuple[int, int, int, int, int]:
    s = m["splits"]
    return tuple(sum(s[k][key] if key != "skipped" else sum(s[k][key].values()) for k in s)
                 for key in ("records", "documents", "skipped", "split_documents", "split_pieces"))


@pytest.mark.parametrize("fmt, layout, max_chars", [
    ("jsonl", "lines", 1_000_000),     # held: parsed whole, then cut
    ("txt", "lines", 1_000_000),       # held: under 4 bytes x max_document_chars, then cut
    ("txt", "lines", 100_000),         # streamed: cut while its lines are read
    ("txt", "one_line", 100_000),      # streamed: one 1.5 MB line, read in fragments
    ("parquet", "lines", 100_000),
])
def test_1_5mb_document_is_split_and_every_token_reaches_a_shard(long_text, long_ids, prepare, tmp_path, fmt, layout,
                                                                 max_chars):
    text = long_text if layout == "lines" else long_text.replace("\n", " ")
    path = _write(tmp_path / f"big.{fmt}", fmt, [text])
    m, out = prepare([path], max_document_chars=max_chars, validation_fraction=0.5)
    records, documents, skipped, split_documents, split_pieces = _split_counts(m)
    assert (records, skipped, split_documents) == (1, 0, 1)
    assert documents == split_pieces >= -(-len(text) // max_chars)
    assert m["inputs"][0]["split_documents"] == 1 and m["inputs"][0]["split_pieces"] == documents
    # The pieces are documents of their own, with consecutive ids, in one split (the record's).
    assert [s for s in m["splits"] if m["splits"][s]["documents"]] in (["train"], ["valid"])
    docs = _documents(out)
    assert len(docs) == documents and sorted(docs) == list(range(min(docs), min(docs) + documents))
    # Every token of the document, in order: the pieces' ids concatenated are the document's ids
    # (the one-line layout has the same ids: the BERT normalizer maps every whitespace to a space).
    want = long_ids
    assert sum(s["tokens"] for split in m["splits"].values() for s in split["shards"]) == len(want)
    assert np.concatenate([docs[i] for i in sorted(docs)]).tolist() == want


def test_pieces_do_not_depend_on_format_or_streaming(long_text, prepare, tmp_path):
    """The same text held (JSONL) or streamed (.txt) is cut into the same pieces: the cut depends on the text alone."""
    pieces = {}
    for fmt in ("jsonl", "txt"):
        m, out = prepare([_write(tmp_path / f"big.{fmt}", fmt, [long_text[:600_000]])], output=tmp_path / fmt,
                         max_document_chars=50_000)
        pieces[fmt] = [d.tolist() for _, d in sorted(_documents(out).items())]
    assert len(pieces["txt"]) >= 12 and pieces["txt"] == pieces["jsonl"]


def test_summary_says_how_many_were_split(long_text, prepared_demo, tmp_path):
    from pretrain.prepare.config import validate_config
    from pretrain.prepare.pipeline import run

    path = _write(tmp_path / "a.jsonl", "jsonl", [GOOD, long_text[:250_000], GOOD])
    lines: list[str] = []
    summary = run(validate_config({"input": [str(path)], "output": str(tmp_path / "out"), "num_workers": 0,
                                   "progress": False, "max_document_chars": 100_000,
                                   "tokenizer": {"path": os.path.join(prepared_demo, "tokenizer.json")}}),
                  echo=lines.append)
    assert (summary.records, summary.documents, summary.split_documents, summary.split_pieces) == (3, 5, 1, 3)
    assert lines[1] == "  records 3 = documents 5 + skipped 0 (none) - extra pieces 2"
    assert lines[2] == "  split documents 1 (over max_document_chars=100,000) into 3 pieces"


UNSPLITTABLE = "x" * 5000


@pytest.mark.parametrize("fmt", ["jsonl", "txt", "parquet"])
def test_unsplittable_run_is_skipped_and_the_rest_kept(fmt, tok, prepare, tmp_path):
    """Only a run without whitespace longer than the limit is lost, counted as its own reason; its document's text around it is kept."""
    doc = "\n".join([GOOD * 20, GOOD, UNSPLITTABLE + " " + GOOD * 3, GOOD * 20])
    m, out = prepare([_write(tmp_path / f"a.{fmt}", fmt, [GOOD, doc, GOOD])], max_document_chars=1000)
    records, documents, skipped, split_documents, split_pieces = _split_counts(m)
    assert m["splits"]["train"]["skipped"] == m["inputs"][0]["skipped"] == {"unsplittable_run": 1}
    assert (records, split_documents) == (3, 1)
    assert documents + skipped == records + split_pieces - split_documents
    docs = _documents(out)
    kept = np.concatenate([docs[i] for i in sorted(docs)]).tolist()
    assert kept == _ids(tok, GOOD) + _ids(tok, doc.replace(UNSPLITTABLE, "")) + _ids(tok, GOOD)


def test_unsplittable_run_in_strict_mode_names_its_line(prepare, tmp_path):
    doc = "\n".join([GOOD * 20, GOOD, UNSPLITTABLE, GOOD])  # the run is on the document's 3rd line
    path = _write(tmp_path / "a.txt", "txt", [GOOD, doc])    # which starts on the file's 3rd line
    with pytest.raises(PrepareError, match=r"a\.txt:5: unsplittable run \(on_bad_record=error\)"):
        prepare([path], max_document_chars=1000, on_bad_record="error")


def test_long_document_with_invalid_utf8_loses_only_the_piece_with_it(tok, prepare, tmp_path):
    lines = [f"Line {i} of a long text file. " + GOOD for i in range(200)]
    raw = "\n".join(lines).encode()
    at = raw.index(b"Line 100 ")
    data = raw[:at] + b"bad \xff\xfe bytes. " + raw[at:]
    (tmp_path / "a.txt").write_bytes(data)
    m, out = prepare([tmp_path / "a.txt"], max_document_chars=2000)
    records, documents, skipped, split_documents, split_pieces = _split_counts(m)
    assert m["splits"]["train"]["skipped"] == {"invalid_utf8": 1}
    assert (records, split_documents, documents) == (1, 1, split_pieces - 1) and documents >= 5
    m, out = prepare([tmp_path / "a.txt"], output=tmp_path / "replace", max_document_chars=2000, invalid_utf8="replace")
    assert _split_counts(m)[2] == 0
    docs = _documents(out)
    assert np.concatenate([docs[i] for i in sorted(docs)]).tolist() == _ids(tok, data.decode("utf-8", "replace"))


def test_line_mode_cuts_a_long_line_and_counts_a_blank_one(tok, prepare, tmp_path):
    long_line = GOOD * 100  # 6,300 characters on one line: read in fragments (cap 4,004 bytes)
    path = tmp_path / "a.txt"
    path.write_text("\n".join([GOOD, long_line, " " * 9000, GOOD]) + "\n")
    m, out = prepare([path], max_document_chars=1000, format__text_documents="line")
    records, documents, skipped, split_documents, split_pieces = _split_counts(m)
    assert m["splits"]["train"]["skipped"] == {"empty_document": 1}  # the 9,000 spaces: a record, counted
    assert (records, split_documents, documents) == (4, 1, 2 + split_pieces) and split_pieces >= 7
    docs = _documents(out)
    assert np.concatenate([docs[i] for i in sorted(docs)]).tolist() == _ids(tok, GOOD) * 102


def _independent_documents(corpus_dir: str) -> list[str]:
    """The documents of the demo corpus the simplest way: blank-line blocks in .txt, "text" of each .jsonl(.gz) line."""
    out = []
    for path in sorted(glob.glob(os.path.join(corpus_dir, "*"))):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            content = f.read()
        if ".txt" in path:
            out += [b for b in content.split("\n\n") if b.strip()]
        else:
            out += [json.loads(line)["text"] for line in content.splitlines() if line.strip()]
    return out


def _digest(root: str) -> dict:
    return {os.path.relpath(p, root): hashlib.sha256(open(p, "rb").read()).hexdigest()
            for p in sorted(glob.glob(os.path.join(root, "*", "*.tar")))}


def test_corpus_accounting_with_many_splits_matches_an_independent_count(demo_corpus, tok, prepare, tmp_path):
    """records in = documents out + skips - extra pieces, per split and per input; no token lost; re-runs identical."""
    limit = 3000
    m, out = prepare([f"{demo_corpus}/*"], max_document_chars=limit, validation_fraction=0.2, chunk_bytes=50_000)
    texts = _independent_documents(demo_corpus)
    long = [t for t in texts if len(t) > limit]
    assert len(long) >= 20  # the limit is low enough to split many documents
    records, documents, skipped, split_documents, split_pieces = _split_counts(m)
    assert records == len(texts) and skipped == 0
    assert split_documents == len(long) and split_pieces >= sum(-(-len(t) // limit) for t in long)
    assert documents == records - skipped + split_pieces - split_documents
    for part in [*m["splits"].values(), *m["inputs"]]:  # pieces stay in their record's split and input
        assert part["documents"] + sum(part["skipped"].values()) == part["records"] + part["split_pieces"] - part["split_documents"]
    assert all(m["splits"][s]["split_documents"] > 0 for s in ("train", "valid"))
    tokens = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
    assert sum(s["tokens"] for s in m["splits"].values()) == tokens
    assert sum(sh["tokens"] for s in m["splits"].values() for sh in s["shards"]) == tokens
    first = _digest(out)
    m2, _ = prepare([f"{demo_corpus}/*"], max_document_chars=limit, validation_fraction=0.2, num_workers=2, chunk_bytes=7_000)
    assert _digest(out) == first and {k: v for k, v in m2.items() if k != "config"} == {k: v for k, v in m.items() if k != "config"}


def test_streamed_long_line_keeps_memory_bounded(long_text, tmp_path):
    """A 12 MB single-line document is cut while it is read: the reader never holds it (Python heap, tracemalloc)."""
    from pretrain.prepare.readers import expand_inputs, read_records

    line = long_text.replace("\n", " ")
    path = tmp_path / "huge.txt"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(8):
            f.write(line + " ")
    size = os.path.getsize(path)
    (file,) = expand_inputs([str(path)], FormatConfig())
    tracemalloc.start()
    try:
        pieces = chars = 0
        for rec in read_records(file, FormatConfig(), 20_000, "skip", 1 << 20):
            assert rec.text is not None and len(rec.text) <= 20_000 and rec.part == pieces and rec.line == 1
            pieces += 1
            chars += len(rec.text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size > 12_000_000 and pieces >= size // 20_000 and chars > 0.99 * size
    assert peak < 4_000_000, peak  # one 1 MB read buffer and a few pieces, not the 12 MB line


# ---- the cutter on its own ------------------------------------------------------------------------------


def _cut(text: str, max_chars: int, seed=None) -> list:
    """PieceCutter over `text`, fed whole or (seed) in random-sized chunks."""
    cutter = PieceCutter(max_chars)
    if seed is None:
        return cutter.feed(text) + cutter.finish()
    rng, out, i = random.Random(seed), [], 0
    while i < len(text):
        n = rng.randrange(1, 3 * max_chars + LOOKAHEAD)
        out += cutter.feed(text[i : i + n])
        i += n
    return out + cutter.finish()


@pytest.mark.parametrize("max_chars", [20_000, 200_000])
def test_pieces_are_cut_at_the_sentence_ends_training_uses(long_text, max_chars):
    text = long_text[:600_000]
    pieces = _cut(text, max_chars)
    assert len(pieces) >= len(text) // max_chars and all(len(p.text) <= max_chars for p in pieces)
    assert [s for p in pieces for s in split_sentences(p.text)] == split_sentences(text)
    for seed in range(3):
        assert _cut(text, max_chars, seed) == pieces
    pos = 0
    for p in pieces:  # each piece knows its line offset in the document
        at = text.index(p.text, pos)
        assert text.count("\n", 0, at) == p.newlines
        pos = at + len(p.text)


def test_sentence_ends_cut_into_the_same_sentences():
    rng = random.Random(0)
    alphabet = list(".!?\u2026\"'\u201d\u2019)] ([\u201c\u2018Aa1\u00e9\n\xa0") + ["\u2026.", "..", " . ", "Dr.", " e.g. ",
                                                                                "U.S. ", "\n\n", " \n \n ", "J. "]
    checked = 0
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        whole = split_sentences(text)
        ends = list(sentence_ends(text))
        assert ends == sorted(ends)
        for p in ends:
            assert split_sentences(text[:p]) + split_sentences(text[p:]) == whole, (text, p)
            checked += 1
        for m in re.finditer(r"(?<=\s)\S", text):  # a scan from any word start finds the same later ends
            assert list(sentence_ends(text, m.start())) == [p for p in ends if p >= m.start()], (text, m.start())
    assert checked > 3000


def test_whitespace_fallback_and_unsplittable_runs():
    text = "Hello there. " * 10 + "x" * 2500 + " tail words here. " + "y" * 999 + " end"
    for seed in (None, 1, 2):
        got = [(p.text and len(p.text), p.newlines) for p in _cut(text, 1000, seed)]
        # 9 sentences; "Hello there." (the next word is lower case: no sentence end); the run, dropped;
        # a whitespace cut; a 999-char word; the rest.
        assert got == [(116, 0), (12, 0), (None, 0), (16, 0), (999, 0), (3, 0)]
    assert [p.text for p in _cut("a" * 50 + "\n" + "b" * 50, 60)] == ["a" * 50, "b" * 50]
    assert [(p.text, p.newlines) for p in _cut("z" * 70 + "\n\n" + "q " * 30, 60)] == [(None, 0), ("q " * 30, 2)]
    assert _cut(" \n " * 100, 60) == []  # nothing but whitespace: no piece (the reader counts an empty document)
    assert [p.text for p in _cut("a" * 50 + "\x0c" + "b" * 50, 60)] == ["a" * 50, "\x0c" + "b" * 50]  # last resort


def test_cut_whitespace_keeps_tokens(tok):
    """WHITESPACE is exactly the whitespace at which cutting keeps the BERT tokens; Python's other whitespace is not."""
    python_space = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    keeps = {c for c in python_space
             if all(_ids(tok, a + c + b) == _ids(tok, a) + _ids(tok, b) for a, b in (("ab", "cd"), ("the", "function")))}
    assert keeps == set(WHITESPACE)
