"""Raw corpus files -> a stream of documents or counted skips, with bounded memory.

Every reader yields ``Record``s in file order: either a document's text or the reason it was
skipped, both with the 1-based line (or row) they started at, so a strict run can name file:line
and a lenient one can count. A document over `max_document_chars` comes as its pieces
(`pieces.py`), each a Record with ``part`` 0, 1, ...: text files are cut while they stream in
(lines are read with a byte cap, so a 100 MB single-line document never becomes one Python
string); JSONL lines are parsed whole, so a line over `max_jsonl_line_bytes` is drained and
counted; parquet values arrive whole from pyarrow.
"""
from __future__ import annotations

import bz2
import codecs
import contextlib
import glob
import gzip
import io
import json
import os
import re
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator, NamedTuple, Optional, Union

from pretrain.prepare.config import FormatConfig, PrepareError
from pretrain.prepare.pieces import Piece, PieceCutter

TYPE_BY_EXT = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
COMPRESSION_BY_EXT = {".gz": "gz", ".zst": "zst", ".zstd": "zst", ".bz2": "bz2"}

# Skip reasons (the manifest's vocabulary; the data loader and users read them).
INVALID_UTF8 = "invalid_utf8"
EMPTY_DOCUMENT = "empty_document"
INVALID_JSON = "invalid_json"
MISSING_FIELD = "missing_field"
FIELD_NOT_STRING = "field_not_string"
UNSPLITTABLE_RUN = "unsplittable_run"   # part of a long document: > max_document_chars without whitespace
LINE_TOO_LONG = "line_too_long"         # a JSONL line over max_jsonl_line_bytes (parsed whole, so not read)

_READ_CHUNK = 1 << 20
_DECODE_BATCH = 1 << 16  # a streamed long document's lines are decoded and cut in batches of this many bytes


class Record(NamedTuple):  # a NamedTuple: built once per record on the hot path, cheaper than a frozen dataclass
    line: int                       # 1-based line (text/jsonl) or row (parquet) where it starts
    text: Optional[str] = None      # the document, or None when skipped
    skip: Optional[str] = None      # reason when skipped
    part: int = 0                   # > 0: a further piece of the previous record's document (pieces.py)


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


def _lines(stream: BinaryIO, cap: int, path: str) -> Iterator[Union[bytes, Iterator[bytes]]]:
    """The lines of a stream, newline stripped; a line over `cap` bytes as an iterator over its
    fragments (`cap` + 1 bytes each, the last one shorter), so that no line is ever held whole.
    Exhaust that iterator before taking the next line. Common lines stay plain bytes: this is the
    reader's hot loop."""
    readline = stream.readline
    limit = cap + 1
    with _corrupt_is_an_error(path):
        while True:
            line = readline(limit)
            if not line:
                return
            if len(line) <= cap or line.endswith(b"\n"):  # the last line may lack its "\n"
                yield line.rstrip(b"\r\n")
            else:
                yield _rest_of_line(stream, line, limit, path)


def _rest_of_line(stream: BinaryIO, first: bytes, limit: int, path: str) -> Iterator[bytes]:
    yield first
    with _corrupt_is_an_error(path):
        while True:
            part = stream.readline(limit)
            if not part or part.endswith(b"\n"):
                yield part.rstrip(b"\r\n")
                return
            yield part


@contextlib.contextmanager
def _corrupt_is_an_error(path: str) -> Iterator[None]:
    try:
        yield
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
    # UTF-8 is at most 4 bytes per char: a document longer than this is surely too long to be held.
    return 4 * max_chars + 4


_ESCAPED = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of invalid UTF-8 bytes


class _LongText:
    """A text-file document over the limit: decoded and cut into pieces as its bytes arrive.

    Invalid UTF-8 is decided per piece (the pieces before the bad bytes may already be out): with
    `invalid_utf8=skip` only the piece holding them is skipped, with `replace` they become U+FFFD.
    """

    def __init__(self, line: int, max_chars: int, utf8: str):
        self.line = line
        self.part = 0
        self.escaped = utf8 != "replace"
        self.decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape" if self.escaped else "replace")
        self.cutter = PieceCutter(max_chars)
        self._data: list[bytes] = []  # fed lines, decoded together once _DECODE_BATCH bytes are here
        self._size = 0

    @classmethod
    def of(cls, line: int, data: bytes, max_chars: int, utf8: str) -> list[Record]:
        """The records of a held document (bytes) over the limit."""
        long = cls(line, max_chars, utf8)
        return long.feed(data) + long.finish()

    def feed(self, data: bytes) -> list[Record]:
        self._data.append(data)
        self._size += len(data)
        return self._decode() if self._size >= _DECODE_BATCH else []

    def finish(self) -> list[Record]:
        out = self._decode(final=True) + self._records(self.cutter.finish())
        if self.part == 0:  # nothing but whitespace
            out.append(Record(self.line, skip=EMPTY_DOCUMENT))
        return out

    def _decode(self, final: bool = False) -> list[Record]:
        text = self.decoder.decode(b"".join(self._data), final=final)
        self._data.clear()
        self._size = 0
        return self._records(self.cutter.feed(text))

    def _records(self, pieces: list[Piece]) -> list[Record]:
        out = []
        for p in pieces:
            line = self.line + p.newlines
            if p.text is None:
                out.append(Record(line, skip=UNSPLITTABLE_RUN, part=self.part))
            elif self.escaped and _ESCAPED.search(p.text):
                out.append(Record(line, skip=INVALID_UTF8, part=self.part))
            else:
                out.append(_checked(line, p.text, self.part))
            self.part += 1
        return out


def _cut_text(line: int, text: str, max_chars: int) -> list[Record]:
    """A held document over the limit (JSONL, parquet) -> its pieces; all start at the record's line."""
    cutter = PieceCutter(max_chars)
    pieces = cutter.feed(text) + cutter.finish()
    if not pieces:
        return [Record(line, skip=EMPTY_DOCUMENT)]
    return [Record(line, skip=UNSPLITTABLE_RUN, part=i) if p.text is None else _checked(line, p.text, i)
            for i, p in enumerate(pieces)]


def read_text(stream: BinaryIO, path: str, fmt: FormatConfig, max_chars: int, utf8: str) -> Iterator[Record]:
    cap = _byte_cap(max_chars)
    lines = _lines(stream, cap, path)
    if fmt.text_documents == "line":
        for lineno, raw in enumerate(lines, 1):
            if type(raw) is bytes:
                if raw.strip():  # blank lines are not documents in line mode
                    rec = _text_record(lineno, raw, max_chars, utf8)
                    yield from _LongText.of(lineno, raw, max_chars, utf8) if rec is None else (rec,)
                continue
            long = _LongText(lineno, max_chars, utf8)
            for fragment in raw:
                yield from long.feed(fragment)
            yield from long.finish()
        return
    parts: list[bytes] = []     # the lines of the document being read, while it may be held
    size = 0
    start = 0
    long: Optional[_LongText] = None  # set once the document is too big to hold
    for lineno, raw in enumerate(lines, 1):
        if type(raw) is bytes:
            if not raw.strip():  # a blank line ends the document
                if parts:
                    data = b"\n".join(parts)
                    rec = _text_record(start, data, max_chars, utf8)
                    yield from _LongText.of(start, data, max_chars, utf8) if rec is None else (rec,)
                elif long is not None:
                    yield from long.finish()
                parts, size, long = [], 0, None
                continue
            if long is not None:
                yield from long.feed(b"\n")
                yield from long.feed(raw)
                continue
            if not parts:
                start = lineno
            size += len(raw) + 1
            if size <= cap:
                parts.append(raw)
                continue
            fragments: Iterable[bytes] = (raw,)
        else:
            if long is not None:
                yield from long.feed(b"\n")
            elif not parts:
                start = lineno
            fragments = raw
        if long is None:  # too big to hold: stream it from here on
            long = _LongText(start, max_chars, utf8)
            if parts:
                yield from long.feed(b"\n".join(parts) + b"\n")
            parts, size = [], 0
        for fragment in fragments:
            yield from long.feed(fragment)
    if parts:
        data = b"\n".join(parts)
        rec = _text_record(start, data, max_chars, utf8)
        yield from _LongText.of(start, data, max_chars, utf8) if rec is None else (rec,)
    elif long is not None:
        yield from long.finish()


def _text_record(lineno: int, data: bytes, max_chars: int, utf8: str) -> Optional[Record]:
    """One held text-file document as a Record; None when it is over the limit (`_LongText.of` cuts it)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        if utf8 == "replace":
            text = data.decode("utf-8", errors="replace")
        elif len(data) <= max_chars:  # surely not over the limit: skipped whole
            return Record(lineno, skip=INVALID_UTF8)
        else:
            return None  # maybe over the limit: cut first, then skip only the pieces with bad bytes
    return _checked(lineno, text) if len(text) <= max_chars else None


def _checked(lineno: int, text: str, part: int = 0) -> Record:
    if not text or text.isspace():  # == not text.strip(), without copying the text
        return Record(lineno, skip=EMPTY_DOCUMENT, part=part)
    return Record(lineno, text=text, part=part)


def read_jsonl(stream: BinaryIO, path: str, fmt: FormatConfig, max_chars: int, utf8: str,
               max_line_bytes: int) -> Iterator[Record]:
    for lineno, raw in enumerate(_lines(stream, max_line_bytes, path), 1):
        if type(raw) is not bytes:  # JSON is parsed whole: a line over the cap is drained, not held
            for _ in raw:
                pass
            yield Record(lineno, skip=LINE_TOO_LONG)
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
        elif len(text) > max_chars:
            yield from _cut_text(lineno, text, max_chars)
        else:
            yield _checked(lineno, text)


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
            elif len(value) > max_chars:
                yield from _cut_text(row, value, max_chars)
            else:
                yield _checked(row, value)
        done = file.size * row // total_rows
        on_bytes(done - reported)
        reported = done


def read_records(file: InputFile, fmt: FormatConfig, max_chars: int, utf8: str, max_line_bytes: int,
                 on_bytes: Callable[[int], None] = lambda n: None) -> Iterator[Record]:
    """All records of one file, in order; a document over `max_chars` as its pieces (part 0, 1, ...)."""
    if file.type == "parquet":
        yield from read_parquet(file, fmt, max_chars, on_bytes)
        return
    stream = open_binary(file, on_bytes)
    try:
        if file.type == "text":
            yield from read_text(stream, file.path, fmt, max_chars, utf8)
        else:
            yield from read_jsonl(stream, file.path, fmt, max_chars, utf8, max_line_bytes)
    finally:
        stream.close()
