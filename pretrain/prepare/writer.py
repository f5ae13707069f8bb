"""Two-pass, bounded-memory shuffle into shards.

Pass 1 appends each encoded document to one of B bucket files chosen by a seeded hash of its doc id
(buffered in memory up to `spill_buffer_bytes` in total, then appended to disk). B is chosen so a
bucket is about half a shard (estimated from input size); a bucket that turns out larger than half a
shard is re-partitioned on disk in pass 2 rather than loaded. Pass 2 reads buckets one at a time in
index order, shuffles each (seeded), and cuts the resulting stream into S shards of equal document
count, shuffling each shard again before writing it. Peak memory ~ one shard + one bucket, whatever
the corpus size; the output depends only on (seed, documents), not on worker count or timing.
"""
from __future__ import annotations

import functools
import os
import random
import struct
import tarfile
from dataclasses import dataclass, field
from typing import Iterator

from pretrain.prepare.encode import RECORD_HEADER
from pretrain.shardformat import doc_key

SHARD_PATTERN = "shard-%06d.tar"
_MASK64 = (1 << 64) - 1
# A tar member costs a 512-byte header plus padding to 512; two members per document.
TAR_OVERHEAD_PER_DOC = 2 * 512 + 512


def mix64(x: int) -> int:
    """splitmix64 finalizer: a fast, well-mixed, platform-independent integer hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


@functools.lru_cache(maxsize=64)
def _seed_mix(seed: int) -> int:
    return mix64(seed)


def is_valid(doc_id: int, seed: int, fraction: float) -> bool:
    """Train/valid assignment by a seeded hash of the doc id (not by position or worker)."""
    return (mix64(_seed_mix(seed) ^ doc_id) >> 11) / float(1 << 53) < fraction


def bucket_of(doc_id: int, seed: int, n_buckets: int) -> int:
    return mix64(_seed_mix(seed + 0x5BD1E995) ^ doc_id) % n_buckets


@dataclass
class BucketSpill:
    """B append-only bucket files for one split, with a shared bounded in-memory buffer."""

    directory: str
    n_buckets: int
    spill_buffer_bytes: int = 32 * 1024 * 1024
    buffers: dict[int, bytearray] = field(default_factory=dict)
    buffered: int = 0
    documents: int = 0
    payload_bytes: int = 0      # estimated tar bytes (records + tar headers/padding): sizes shards
    record_bytes: int = 0       # bytes of bucket records: sizes memory
    seed_for_split: int = 0     # seeds the re-partitioning of oversized buckets

    def __post_init__(self) -> None:
        os.makedirs(self.directory, exist_ok=True)

    def path(self, bucket: int) -> str:
        return os.path.join(self.directory, f"bucket-{bucket:06d}.bin")

    def add(self, bucket: int, record: bytes) -> None:
        self.buffers.setdefault(bucket, bytearray()).extend(record)
        self.buffered += len(record)
        self.documents += 1
        self.payload_bytes += len(record) - RECORD_HEADER.size + TAR_OVERHEAD_PER_DOC
        self.record_bytes += len(record)
        if self.buffered >= self.spill_buffer_bytes:
            self.flush()

    def flush(self) -> None:
        # Open/append/close per bucket: B can be in the thousands, more than the fd limit allows open.
        for bucket in sorted(self.buffers):
            with open(self.path(bucket), "ab") as f:
                f.write(self.buffers[bucket])
        self.buffers.clear()
        self.buffered = 0

    def read(self, bucket: int, max_bytes: int) -> Iterator[list[bytes]]:
        """The bucket's records in groups of at most ~max_bytes, removing its file.

        The bucket count is a guess made before reading the corpus; when a bucket came out larger
        than `max_bytes`, it is re-partitioned on disk (streaming, by a second seeded hash of the doc
        id) instead of loaded whole, so pass 2's memory stays bounded even when the guess was wrong.
        """
        yield from self._read_path(self.path(bucket), max_bytes, level=1)

    def _read_path(self, path: str, max_bytes: int, level: int) -> Iterator[list[bytes]]:
        if not os.path.exists(path):
            return
        size = os.path.getsize(path)
        if size <= max_bytes or level > 8:
            records = _load_records(path)
            os.remove(path)
            yield records
            return
        parts = -(-size // max_bytes) + 1
        sub = [f"{path}.{level}-{i:04d}" for i in range(parts)]
        files = [open(p, "wb") for p in sub]
        try:
            for rec in _iter_records(path):
                (doc_id,) = _DOC_ID.unpack_from(rec, 0)
                files[mix64(mix64(self.seed_for_split + level) ^ doc_id) % parts].write(rec)
        finally:
            for f in files:
                f.close()
        os.remove(path)
        for p in sub:
            yield from self._read_path(p, max_bytes, level + 1)


_DOC_ID = struct.Struct("<Q")


def _iter_records(path: str) -> Iterator[bytes]:
    """Records of a bucket file, one at a time (header + payload bytes)."""
    with open(path, "rb", buffering=1 << 20) as f:
        while True:
            head = f.read(RECORD_HEADER.size)
            if not head:
                return
            _, _, _, la, lb = RECORD_HEADER.unpack(head)
            yield head + f.read(la + lb)


def _load_records(path: str) -> list[bytes]:
    """All records of a bucket file that fits in memory: one read, split in place."""
    with open(path, "rb") as f:
        data = f.read()
    out, pos, end, hsize, unpack = [], 0, len(data), RECORD_HEADER.size, RECORD_HEADER.unpack_from
    while pos < end:
        _, _, _, la, lb = unpack(data, pos)
        nxt = pos + hsize + la + lb
        out.append(data[pos:nxt])
        pos = nxt
    return out


def _stream(spill: BucketSpill, seed: int, split: str, max_bucket_bytes: int) -> Iterator[bytes]:
    for bucket in range(spill.n_buckets):
        for part, records in enumerate(spill.read(bucket, max_bucket_bytes)):
            random.Random(f"{seed}/{split}/bucket/{bucket}/{part}").shuffle(records)
            yield from records


def number_of_shards(documents: int, payload_bytes: int, shard_size_bytes: int, min_shards: int) -> int:
    if documents == 0:
        return 0
    wanted = max(min_shards, -(-payload_bytes // shard_size_bytes))
    return max(1, min(wanted, documents))


def write_shards(spill: BucketSpill, out_dir: str, split: str, seed: int, n_shards: int) -> list[dict]:
    """Pass 2: buckets -> `n_shards` tars under out_dir/split; returns the manifest's shard entries."""
    spill.flush()
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    entries: list[dict] = []
    if n_shards == 0:
        return entries
    total = spill.documents
    # A shard's records plus one bucket are in memory at once: keep a bucket at most half a shard.
    max_bucket_bytes = max(1 << 16, spill.record_bytes // n_shards // 2)
    stream = _stream(spill, seed, split, max_bucket_bytes)
    for k in range(n_shards):
        count = (k + 1) * total // n_shards - k * total // n_shards
        records = [next(stream) for _ in range(count)]
        random.Random(f"{seed}/{split}/shard/{k}").shuffle(records)
        name = f"{split}/{SHARD_PATTERN % k}"
        entries.append(_write_tar(os.path.join(out_dir, name), name, records))
    return entries


def _tarfile_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    info.mtime = 0
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


# The ustar header of a shard member differs only in name, size and checksum; tarfile builds it
# field by field (~80 us, two members per document), this patches a template (~2 us). Checked
# against tarfile at import; any difference (another Python) -> tarfile's own headers.
_TEMPLATE = _tarfile_header("x", 0)
_TAR_MODE_IDS = _TEMPLATE[100:124]          # mode, uid, gid
_TAR_MTIME = _TEMPLATE[136:148]
_TAR_TAIL = _TEMPLATE[156:]                 # type, linkname, magic, uname, gname, dev, prefix, pad
_TAR_FIXED_SUM = sum(_TAR_MODE_IDS) + sum(_TAR_MTIME) + 8 * 32 + sum(_TAR_TAIL)


def _fast_header(name: str, size: int) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) > 99 or size >= 8**11:
        return _tarfile_header(name, size)
    size_field = b"%011o\0" % size
    chk = _TAR_FIXED_SUM + sum(raw) + sum(size_field)
    return (raw.ljust(100, b"\0") + _TAR_MODE_IDS + size_field + _TAR_MTIME + b"%06o\0 " % chk + _TAR_TAIL)


def _fast_header_matches() -> bool:
    cases = [("d000000000000.ids.npy", 0), ("d000000012345.sents.npy", 132), ("d1234567890123.ids.npy", 8**11 - 1)]
    return all(_fast_header(n, k) == _tarfile_header(n, k) for n, k in cases)


tar_header = _fast_header if _fast_header_matches() else _tarfile_header


def _write_tar(path: str, name: str, records: list[bytes]) -> dict:
    """One shard, as a plain ustar tar (what `webdataset.TarWriter` writes, minus its cost).

    TarWriter goes through tarfile's default PAX headers (~0.2 ms per member, two members per
    document: the slowest part of prepare on short documents) and imports torch. Same member
    names and content, fixed mtime/owner so re-runs are byte-identical.
    """
    sentences = tokens = 0
    offset = 0
    hsize = RECORD_HEADER.size
    with open(path, "wb", buffering=1 << 20) as f:
        write = f.write
        for rec in records:
            doc_id, n_sents, n_tokens, la, lb = RECORD_HEADER.unpack_from(rec, 0)
            key = doc_key(doc_id)
            view = memoryview(rec)
            for suffix, a, b in ((".ids.npy", hsize, hsize + la), (".sents.npy", hsize + la, hsize + la + lb)):
                size = b - a
                write(tar_header(key + suffix, size))
                write(view[a:b])
                pad = -size % tarfile.BLOCKSIZE
                if pad:
                    write(bytes(pad))
                offset += tarfile.BLOCKSIZE + size + pad
            sentences += n_sents
            tokens += n_tokens
        # End of archive as tarfile writes it: two zero blocks, then zeros up to a whole record.
        offset += 2 * tarfile.BLOCKSIZE
        tail = -offset % tarfile.RECORDSIZE
        write(bytes(2 * tarfile.BLOCKSIZE + tail))
    return {"name": name, "documents": len(records), "sentences": sentences, "tokens": tokens,
            "bytes": offset + tail}
