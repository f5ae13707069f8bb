"""Raw corpus files -> a stream of documents or counted skips, with bounded memory.

Every reader yields ``Record``s in file order: either a document's text or the reason it was
skipped, both with the 1-based line (or row) they started at, so a strict run can name file:line
and a lenient one can count. Lines are read with a byte cap, so a 100 MB single-line document is
recognised as too long without ever becoming one Python string.
"""
from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Optional

from pretrain.prepare.config import FormatConfig, PrepareError

TYPE_BY_EXT = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
COMPRESSION_BY_EXT = {".gz": "gz", ".zst": "zst", ".zstd": "zst", ".bz2": "bz2"}

# Skip reasons (the manifest's vocabulary; the data loader and users read them).
INVALID_UTF8 = "invalid_utf8"
EMPTY_DOCUMENT = "empty_document"
INVALID_JSON = "invalid_json"
MISSING_FIELD = "missing_field"
FIELD_NOT_STRING = "field_not_string"
DOCUMENT_TOO_LONG = "document_too_long"

_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Record:
    line: int                       # 1-based line (text/jsonl) or row (parquet) where it starts
    text: Optional[str] = None      # the document, or None when skipped
    skip: Optional[str] = None      # reason when skipped


@dataclass(frozen=True)
class InputFile:
    path: str
    type: str          # text | jsonl | parquet
    compression: str   # none | gz | zst | bz2
    size: int          # bytes on disk


def expand_inputs(patterns: list[str], fmt: FormatConfig) -> list[InputFile]:
    """Globs/paths -> sorted, de-duplicated files with their format; a pattern matching nothing is an error."""
    paths: set[str] = set()
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if glob.has_magic(pattern):
            matched = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
            if not matched:
                raise PrepareError(f"{pattern}: glob matches no files")
            paths.update(matched)
        elif os.path.isdir(pattern):
            raise PrepareError(f"{pattern}: is a directory (give files or a glob like '{pattern}/*.txt')")
        elif not os.path.isfile(pattern):
            raise PrepareError(f"{pattern}: no such file")
        else:
            paths.add(pattern)
    files = []
    for path in sorted(paths, key=os.path.abspath):
        if not os.access(path, os.R_OK):
            raise PrepareError(f"{path}: not readable (permission denied)")
        files.append(InputFile(path, *detect_format(path, fmt), os.path.getsize(path)))
    return files


def detect_format(path: str, fmt: FormatConfig) -> tuple[str, str]:
    stem, ext = os.path.splitext(path.lower())
    compression = "none"
    if ext in COMPRESSION_BY_EXT:
        compression = COMPRESSION_BY_EXT[ext]
        stem, ext = os.path.splitext(stem)
    if fmt.compression != "auto":
        compression = fmt.compression
    kind = fmt.type if fmt.type != "auto" else TYPE_BY_EXT.get(ext)
    if kind is None:
        raise PrepareError(
            f"{path}: cannot tell the format from the extension {ext!r} "
            f"(known: {', '.join(TYPE_BY_EXT)}; set format.type=text|jsonl|parquet)"
        )
    if kind == "parquet" and compression != "none":
        raise PrepareError(f"{path}: compressed parquet files are not supported (parquet compresses internally)")
    return kind, compression


class _CountingReader(io.RawIOBase):
    """Wraps the on-disk file to report compressed bytes read (the progress bar's unit)."""

    def __init__(self, f: BinaryIO, on_bytes: Callable[[int], None]):
        self._f = f
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        if n:
            self._on_bytes(n)
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def open_binary(file: InputFile, on_bytes: Callable[[int], None]) -> BinaryIO:
    """A buffered binary stream of the decompressed content."""
    try:
        raw = open(file.path, "rb")
    except OSError as e:
        raise PrepareError(f"{file.path}: cannot open ({e.strerror})") from None
    counted = io.BufferedReader(_CountingReader(raw, on_bytes), _READ_CHUNK)
    if file.compression == "none":
        return counted
    if file.compression == "gz":
        return io.BufferedReader(gzip.GzipFile(fileobj=counted, mode="rb"), _READ_CHUNK)
    if file.compression == "bz2":
        return io.BufferedReader(bz2.BZ2File(counted, mode="rb"), _READ_CHUNK)
    if file.compression == "zst":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(counted, read_across_frames=True)
        return io.BufferedReader(reader, _READ_CHUNK)
    raise AssertionError(file.compression)


def _capped_lines(stream: BinaryIO, cap: int, path: str) -> Iterator[tuple[bytes, bool]]:
    """(line without newline, too_long) pairs; a line longer than `cap` bytes is drained, not kept."""
    try:
        while True:
            line = stream.readline(cap + 1)
            if not line:
                return
            if len(line) > cap and not line.endswith(b"\n"):
                while True:  # drain the rest of the over-long line in bounded pieces
                    rest = stream.readline(_READ_CHUNK)
                    if not rest or rest.endswith(b"\n"):
                        break
                yield b"", True
                continue
            yield line.rstrip(b"\r\n"), False
    except (EOFError, OSError, zlib.error) as e:
        raise PrepareError(f"{path}: truncated or corrupt compressed file ({e})") from None
    except Exception as e:  # zstandard.ZstdError and friends do not share a base class
        if type(e).__module__.startswith("zstd") or "Zstd" in type(e).__name__:
            raise PrepareError(f"{path}: truncated or corrupt compressed file ({e})") from None
        raise


def _decode(data: bytes, policy: str) -> Optional[str]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace") if policy == "replace" else None


def _byte_cap(max_chars: int) -> int:
    # UTF-8 is at most 4 bytes per char: a line longer than this is surely too long.
    return 4 * max_chars + 4


def read_text(stream: BinaryIO, path: str, fmt: FormatConfig, max_chars: int, utf8: str) -> Iterator[Record]:
    cap = _byte_cap(max_chars)
    lines = _capped_lines(stream, cap, path)
    if fmt.text_documents == "line":
        for lineno, (raw, too_long) in enumerate(lines, 1):
            if too_long:
                yield Record(lineno, skip=DOCUMENT_TOO_LONG)
                continue
            if not raw.strip():
                continue  # blank lines are not documents in line mode
            yield _text_record(lineno, [raw], max_chars, utf8)
        return
    parts: list[bytes] = []
    size = 0
    start = 0
    too_long = False
    lineno = 0
    for lineno, (raw, line_too_long) in enumerate(lines, 1):
        if not line_too_long and not raw.strip():
            if parts or too_long:
                yield Record(start, skip=DOCUMENT_TOO_LONG) if too_long else _text_record(start, parts, max_chars, utf8)
            parts, size, too_long = [], 0, False
            continue
        if not parts and not too_long:
            start = lineno
        if too_long:
            continue
        size += len(raw) + 1
        if line_too_long or size > cap:
            too_long, parts = True, []
            continue
        parts.append(raw)
    if parts or too_long:
        yield Record(start, skip=DOCUMENT_TOO_LONG) if too_long else _text_record(start, parts, max_chars, utf8)


def _text_record(lineno: int, parts: list[bytes], max_chars: int, utf8: str) -> Record:
    text = _decode(b"\n".join(parts), utf8)
    if text is None:
        return Record(lineno, skip=INVALID_UTF8)
    return _checked(lineno, text, max_chars)


def _checked(lineno: int, text: str, max_chars: int) -> Record:
    if len(text) > max_chars:
        return Record(lineno, skip=DOCUMENT_TOO_LONG)
    if not text or text.isspace():  # == not text.strip(), without copying the text
        return Record(lineno, skip=EMPTY_DOCUMENT)
    return Record(lineno, text=text)


def read_jsonl(stream: BinaryIO, path: str, fmt: FormatConfig, max_chars: int, utf8: str) -> Iterator[Record]:
    # JSON escapes may expand one char to 6 bytes (\uXXXX); allow for that before calling it too long.
    cap = 6 * max_chars + 1024
    for lineno, (raw, too_long) in enumerate(_capped_lines(stream, cap, path), 1):
        if too_long:
            yield Record(lineno, skip=DOCUMENT_TOO_LONG)
            continue
        if not raw.strip():
            continue
        line = _decode(raw, utf8)
        if line is None:
            yield Record(lineno, skip=INVALID_UTF8)
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            yield Record(lineno, skip=INVALID_JSON)
            continue
        if not isinstance(obj, dict) or fmt.text_field not in obj or obj[fmt.text_field] is None:
            yield Record(lineno, skip=MISSING_FIELD)
            continue
        text = obj[fmt.text_field]
        if not isinstance(text, str):
            yield Record(lineno, skip=FIELD_NOT_STRING)
            continue
        yield _checked(lineno, text, max_chars)


def read_parquet(file: InputFile, fmt: FormatConfig, max_chars: int, on_bytes: Callable[[int], None]) -> Iterator[Record]:
    """Row-group batches of one column; never the whole file."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file.path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-parquet files
        raise PrepareError(f"{file.path}: not a readable parquet file ({e})") from None
    if fmt.text_field not in pf.schema_arrow.names:
        raise PrepareError(
            f"{file.path}: no column {fmt.text_field!r} (has {', '.join(pf.schema_arrow.names)}; set format.text_field)"
        )
    total_rows = max(1, pf.metadata.num_rows)
    row = 0
    reported = 0
    for batch in pf.iter_batches(batch_size=1024, columns=[fmt.text_field]):
        for value in batch.column(0).to_pylist():
            row += 1
            if value is None:
                yield Record(row, skip=MISSING_FIELD)
            elif not isinstance(value, str):
                yield Record(row, skip=FIELD_NOT_STRING)
            else:
                yield _checked(row, value, max_chars)
        done = file.size * row // total_rows
        on_bytes(done - reported)
        reported = done


def read_records(file: InputFile, fmt: FormatConfig, max_chars: int, utf8: str,
                 on_bytes: Callable[[int], None] = lambda n: None) -> Iterator[Record]:
    """All records of one file, in order."""
    if file.type == "parquet":
        yield from read_parquet(file, fmt, max_chars, on_bytes)
        return
    stream = open_binary(file, on_bytes)
    try:
        reader = read_text if file.type == "text" else read_jsonl
        yield from reader(stream, file.path, fmt, max_chars, utf8)
    finally:
        stream.close()
