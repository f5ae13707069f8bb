"""`prepare` end to end: inputs -> tokenizer -> tokenized buckets -> shards + manifest, atomically.

Everything is written into ``<output>/.tmp-<uuid>`` and only swapped in at the end (old manifest
removed first, new manifest renamed in last), so readers never see old and new shards mixed, and a
crash leaves the previous output or no manifest, never a half-written one. Re-running with the same
config reproduces the same bytes.
"""
from __future__ import annotations

import collections
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from tokenizers import Tokenizer

from pretrain.prepare import encode
from pretrain.prepare.config import PrepareConfig, PrepareError, config_dict, config_hash
from pretrain.prepare.readers import EMPTY_DOCUMENT, InputFile, expand_inputs, read_records
from pretrain.prepare.tokenizer import is_lowercase, load_tokenizer, train_tokenizer
from pretrain.prepare.writer import BucketSpill, bucket_of, is_valid, number_of_shards, write_shards
from pretrain.shardformat import MANIFEST_FORMAT, MANIFEST_NAME, SPECIAL_TOKENS, TOKENIZER_NAME, tokenizer_fingerprint

log = logging.getLogger(__name__)

SPLITS = ("train", "valid")
ONE_SENTENCE = "one_sentence_documents"
# Decompressed size / on-disk size, to guess the corpus size before reading it (bucket count only).
_EXPANSION = {"none": 1.0, "gz": 3.5, "zst": 4.0, "bz2": 4.5}
# Shard bytes per byte of raw text (uint16 ids ~ 2 bytes per ~4 chars, plus tar/npy overhead).
_SHARD_BYTES_PER_RAW_BYTE = 0.8


@dataclass
class SplitStats:
    records: int = 0
    documents: int = 0
    sentences: int = 0
    tokens: int = 0
    one_sentence: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    split_documents: int = 0    # records over max_document_chars that were cut into several pieces
    split_pieces: int = 0       # the pieces those became (documents or skips, each with its own id)


@dataclass
class FileStats:
    records: int = 0
    documents: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    split_documents: int = 0
    split_pieces: int = 0


def _count_piece(stats, part: int) -> None:
    """Account piece `part` (>= 1) of a split record: records + pieces - split = documents + skipped."""
    if part == 1:
        stats.split_documents += 1
        stats.split_pieces += 1  # the record's first piece, now known to be one
    stats.split_pieces += 1


@dataclass
class Summary:
    output: str
    records: int
    documents: int
    sentences: int
    tokens: int
    skipped: dict
    split_documents: int
    split_pieces: int
    max_document_chars: int
    shards: dict
    raw_bytes: int
    seconds: float

    def lines(self) -> list[str]:
        mbps = self.raw_bytes / 1e6 / max(self.seconds, 1e-9)
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        extra = self.split_pieces - self.split_documents
        return [
            f"prepared {self.output}",
            f"  records {self.records:,} = documents {self.documents:,} + skipped {sum(self.skipped.values()):,} ({skipped})"
            + (f" - extra pieces {extra:,}" if extra else ""),
            f"  split documents {self.split_documents:,} (over max_document_chars={self.max_document_chars:,})"
            + (f" into {self.split_pieces:,} pieces" if self.split_documents else ""),
            f"  sentences {self.sentences:,}  tokens {self.tokens:,}",
            "  shards " + "  ".join(f"{k}={v}" for k, v in self.shards.items()),
            f"  {self.raw_bytes / 1e6:.1f} MB in {self.seconds:.1f} s = {mbps:.2f} MB/s",
        ]


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(cfg: PrepareConfig, total: int, desc: str):
    if not cfg.progress:
        return _NoProgress()  # and no tqdm import (~0.1 s)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not cfg.progress, file=sys.stderr, leave=False)


def _check_output(cfg: PrepareConfig, out: str, new_hash: str) -> None:
    manifest = os.path.join(out, MANIFEST_NAME)
    if cfg.overwrite:
        return
    if os.path.exists(manifest):
        try:
            with open(manifest, encoding="utf-8") as f:
                old = json.load(f).get("config_hash")
        except (OSError, ValueError):
            old = None
        if old != new_hash:
            raise PrepareError(
                f"{out} already holds shards prepared with a different config (config_hash {old} != {new_hash}); "
                "pass overwrite=true to replace them"
            )
    elif any(os.path.exists(os.path.join(out, p)) for p in (*SPLITS, TOKENIZER_NAME)):
        raise PrepareError(f"{out} has shards or a tokenizer but no manifest; pass overwrite=true to replace them")


def _training_texts(cfg: PrepareConfig, files: list[InputFile]) -> Iterator[str]:
    """The first `tokenizer.train_bytes` of document text, streamed (the trainer keeps counts only)."""
    budget = cfg.tokenizer.train_bytes or math.inf
    seen = 0
    bar = _progress(cfg, sum(f.size for f in files), "tokenizer sample")
    try:
        for file in files:
            for rec in read_records(file, cfg.format, cfg.max_document_chars, cfg.invalid_utf8,
                                    cfg.max_jsonl_line_bytes, bar.update):
                if rec.text is None:
                    continue
                yield rec.text
                seen += len(rec.text)
                if seen >= budget:
                    return
    finally:
        bar.close()


class _Pool:
    """Ordered, bounded task pipeline over a process pool (or inline when num_workers == 0)."""

    def __init__(self, n_workers: int, tokenizer_json: str, vocab_size: int):
        self.n = n_workers
        self.pending: collections.deque = collections.deque()
        if n_workers == 0:
            encode.init_worker(tokenizer_json, vocab_size)
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
            self.pool = None
        else:
            # fork where available: no re-import per worker, and no `if __name__ == "__main__"` trap
            # for callers of run(). tokenizers disables its own thread pool in forked children; the
            # variable below (set only around the fork) keeps it from warning about that.
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            previous = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            try:
                if method == "fork":  # build the encoder once, here; workers inherit it
                    encode.load_state(tokenizer_json, vocab_size)
                    init, args = encode.init_forked_worker, ()
                else:
                    init, args = encode.init_worker, (tokenizer_json, vocab_size)
                self.pool = mp.get_context(method).Pool(n_workers, initializer=init, initargs=args)
            finally:
                if previous is None:
                    os.environ.pop("TOKENIZERS_PARALLELISM", None)
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = previous

    def submit(self, meta, docs) -> Iterator:
        """Queue one task; yields finished (meta, result) pairs in submission order when the queue is full."""
        if self.pool is None:
            yield meta, encode.encode_chunk(docs)
            return
        self.pending.append((meta, self.pool.apply_async(encode.encode_chunk, (docs,))))
        while len(self.pending) > 2 * self.n + 1:
            m, r = self.pending.popleft()
            yield m, r.get()

    def drain(self) -> Iterator:
        while self.pending:
            m, r = self.pending.popleft()
            yield m, r.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
        encode._STATE.clear()

    def terminate(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        encode._STATE.clear()


def run(cfg: PrepareConfig, echo: Callable[[str], None] = print) -> Summary:
    """Prepare `cfg.input` into `cfg.output`; raises PrepareError for anything the user can fix."""
    t0 = time.perf_counter()
    files = expand_inputs(cfg.input, cfg.format)
    out = os.path.abspath(cfg.output)
    tok: Optional[Tokenizer] = load_tokenizer(cfg.tokenizer.path) if cfg.tokenizer.path else None
    fingerprint = tokenizer_fingerprint(tok) if tok is not None else ""
    chash = config_hash(cfg, fingerprint)
    _check_output(cfg, out, chash)
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, f".tmp-{uuid.uuid4().hex}")
    os.makedirs(tmp)
    try:
        if tok is None:
            tok = train_tokenizer(lambda: _training_texts(cfg, files), cfg.tokenizer)
            fingerprint = tokenizer_fingerprint(tok)
        tok.save(os.path.join(tmp, TOKENIZER_NAME))
        split_stats, file_stats, shards = _tokenize_and_shard(cfg, files, tok, tmp)
        manifest = _manifest(cfg, tok, fingerprint, chash, files, split_stats, file_stats, shards)
        with open(os.path.join(tmp, MANIFEST_NAME), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=False)
            f.write("\n")
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    totals = SplitStats()
    for s in split_stats.values():
        totals.records += s.records
        totals.documents += s.documents
        totals.sentences += s.sentences
        totals.tokens += s.tokens
        totals.skipped.update(s.skipped)
        totals.split_documents += s.split_documents
        totals.split_pieces += s.split_pieces
    summary = Summary(out, totals.records, totals.documents, totals.sentences, totals.tokens,
                      dict(totals.skipped), totals.split_documents, totals.split_pieces, cfg.max_document_chars,
                      {k: len(v) for k, v in shards.items()}, sum(f.size for f in files), time.perf_counter() - t0)
    for line in summary.lines():
        echo(line)
    return summary


def _estimate_buckets(cfg: PrepareConfig, files: list[InputFile], fraction: float, min_shards: int) -> int:
    raw = sum(f.size * (2.0 if f.type == "parquet" else _EXPANSION[f.compression]) for f in files)
    est = raw * fraction * _SHARD_BYTES_PER_RAW_BYTE
    # ~2 buckets per shard keeps a bucket at about half a shard even if the estimate is 2x low.
    return max(2 * min_shards, 2 * math.ceil(est / cfg.shard_size_bytes), 1)


def _tokenize_and_shard(cfg: PrepareConfig, files: list[InputFile], tok: Tokenizer, tmp: str):
    vf = cfg.validation_fraction
    spills = {
        "train": BucketSpill(os.path.join(tmp, "buckets", "train"),
                             _estimate_buckets(cfg, files, 1.0 - vf, cfg.min_train_shards), cfg.spill_buffer_bytes,
                             seed_for_split=cfg.seed * 2),
        "valid": BucketSpill(os.path.join(tmp, "buckets", "valid"),
                             _estimate_buckets(cfg, files, vf, max(1, cfg.min_valid_shards)), cfg.spill_buffer_bytes,
                             seed_for_split=cfg.seed * 2 + 1),
    }
    split_stats = {s: SplitStats() for s in SPLITS}
    file_stats = [FileStats() for _ in files]
    strict = cfg.on_bad_record == "error"

    def split_of(doc_id: int) -> str:
        return "valid" if vf > 0 and is_valid(doc_id, cfg.seed, vf) else "train"

    def skip(file_idx: int, line: int, split: str, reason: str) -> None:
        if strict:
            raise PrepareError(f"{files[file_idx].path}:{line}: {reason.replace('_', ' ')} (on_bad_record=error)")
        split_stats[split].skipped[reason] += 1
        file_stats[file_idx].skipped[reason] += 1

    def consume(meta, results: list[encode.Encoded]) -> None:
        file_idx, lines, splits = meta
        for line, split, res in zip(lines, splits, results):
            if res.sentences == 0:
                skip(file_idx, line, split, EMPTY_DOCUMENT)
                continue
            st = split_stats[split]
            st.documents += 1
            st.sentences += res.sentences
            st.tokens += res.tokens
            st.one_sentence += res.sentences == 1
            file_stats[file_idx].documents += 1
            spills[split].add(bucket_of(res.doc_id, cfg.seed, spills[split].n_buckets), res.record)

    pool = _Pool(cfg.resolved_workers(), tok.to_str(), tok.get_vocab_size())
    bar = _progress(cfg, sum(f.size for f in files), "prepare")
    doc_id = 0
    split = "train"
    try:
        for file_idx, file in enumerate(files):
            docs: list[tuple[int, str]] = []
            lines: list[int] = []
            splits: list[str] = []
            size = 0
            fs = file_stats[file_idx]
            for rec in read_records(file, cfg.format, cfg.max_document_chars, cfg.invalid_utf8,
                                    cfg.max_jsonl_line_bytes, bar.update):
                rid, doc_id = doc_id, doc_id + 1
                if rec.part == 0:  # a new record; its pieces (if any) follow and stay in its split
                    split = split_of(rid)
                    split_stats[split].records += 1
                    fs.records += 1
                else:
                    _count_piece(split_stats[split], rec.part)
                    _count_piece(fs, rec.part)
                if rec.text is None:
                    skip(file_idx, rec.line, split, rec.skip)
                    continue
                docs.append((rid, rec.text))
                lines.append(rec.line)
                splits.append(split)
                size += len(rec.text)
                if size >= cfg.chunk_bytes:
                    for m, r in pool.submit((file_idx, lines, splits), docs):
                        consume(m, r)
                    docs, lines, splits, size = [], [], [], 0
            if docs:
                for m, r in pool.submit((file_idx, lines, splits), docs):
                    consume(m, r)
        for m, r in pool.drain():
            consume(m, r)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        bar.close()
    shards = {}
    for split, min_shards in (("train", cfg.min_train_shards), ("valid", cfg.min_valid_shards)):
        spill = spills[split]
        spill.flush()
        n = number_of_shards(spill.documents, spill.payload_bytes, cfg.shard_size_bytes, max(1, min_shards))
        shards[split] = write_shards(spill, tmp, split, cfg.seed, n)
    shutil.rmtree(os.path.join(tmp, "buckets"), ignore_errors=True)
    return split_stats, file_stats, shards


def _manifest(cfg, tok, fingerprint, chash, files, split_stats, file_stats, shards) -> dict:
    splits = {}
    for name in SPLITS:
        st = split_stats[name]
        splits[name] = {
            "shards": shards[name],
            "documents": st.documents,
            "sentences": st.sentences,
            "tokens": st.tokens,
            "skipped": dict(sorted(st.skipped.items())),
            "records": st.records,
            "split_documents": st.split_documents,
            "split_pieces": st.split_pieces,
            ONE_SENTENCE: st.one_sentence,
        }
    return {
        "format": MANIFEST_FORMAT,
        "tokenizer": {
            "file": TOKENIZER_NAME,
            "sha256": fingerprint,
            "vocab_size": tok.get_vocab_size(),
            "lowercase": is_lowercase(tok),
            "special_tokens": {t: tok.token_to_id(t) for t in SPECIAL_TOKENS},
        },
        "splits": splits,
        "inputs": [
            {"path": os.path.abspath(f.path), "bytes": f.size, "records": fs.records, "documents": fs.documents,
             "skipped": dict(sorted(fs.skipped.items())), "split_documents": fs.split_documents,
             "split_pieces": fs.split_pieces}
            for f, fs in zip(files, file_stats)
        ],
        "config": config_dict(cfg),
        "config_hash": chash,
    }


def _swap_in(tmp: str, out: str) -> None:
    """Replace out's manifest/tokenizer/splits with tmp's: manifest out first, new manifest in last."""
    old = os.path.join(out, f".old-{uuid.uuid4().hex}")
    os.makedirs(old)
    manifest = os.path.join(out, MANIFEST_NAME)
    if os.path.exists(manifest):
        os.replace(manifest, os.path.join(old, MANIFEST_NAME))
    for name in (*SPLITS, TOKENIZER_NAME):
        if os.path.exists(os.path.join(out, name)):
            os.replace(os.path.join(out, name), os.path.join(old, name))
        os.replace(os.path.join(tmp, name), os.path.join(out, name))
    os.replace(os.path.join(tmp, MANIFEST_NAME), manifest)
    shutil.rmtree(old, ignore_errors=True)
