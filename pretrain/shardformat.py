"""The on-disk contract between `prepare` (writer) and `pretrain.data` (reader).

One WebDataset sample = one document:
  <key>.ids.npy    1-D token ids of the whole document, no special tokens
                   (uint16 when the vocab fits, else int32)
  <key>.sents.npy  1-D int32 cumulative sentence end offsets into ids (last == len(ids))
The key is ``d`` + the 12-digit global document id, unique across splits; the document id
seeds every random choice made on that document (pairs, masks), so it must never change
once the shards are written.

Layout of a prepared directory::

  <dir>/manifest.json   see ``MANIFEST_FORMAT`` and ``load_manifest``
  <dir>/tokenizer.json  a `tokenizers` WordPiece tokenizer
  <dir>/train/shard-000000.tar ...
  <dir>/valid/shard-000000.tar ...
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MANIFEST_FORMAT = "bert-pretrain-shards/1"
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class ShardFormatError(ValueError):
    """A prepared directory or shard that does not follow this contract (user-facing)."""


def doc_key(doc_id: int) -> str:
    return f"d{doc_id:012d}"


def doc_id_from_key(key: str) -> int:
    # webdataset may prefix keys with a directory part; the id is the trailing digits.
    base = key.rsplit("/", 1)[-1]
    if not base.startswith("d") or not base[1:].isdigit():
        raise ShardFormatError(f"sample key {key!r} is not a document key (expected d<12 digits>)")
    return int(base[1:])


def ids_dtype(vocab_size: int) -> np.dtype:
    """Token id dtype of a shard: uint16 when the vocab fits, else int32."""
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)


def _npy_save(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _npy_header_reference(dtype: np.dtype, n: int) -> bytes:
    # What np.save writes before the data of a 1-D C-order array (format 1.0): magic, header length,
    # the header dict with room for the shape to grow to 21 digits, space-padded so the data starts
    # at a multiple of 64 bytes, newline.
    d = "{'descr': %r, 'fortran_order': False, 'shape': (%d,), }" % (np.lib.format.dtype_to_descr(dtype), n)
    d += " " * (21 - len(str(n)))
    hlen = len(d) + 1
    pad = 64 - ((6 + 2 + 2 + hlen) % 64)
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", hlen + pad) + d.encode("latin1") + b" " * pad + b"\n"


_NPY_TEMPLATES: dict = {}


def _npy_header(dtype: np.dtype, n: int) -> bytes:
    """_npy_header_reference, from a per-dtype template (the header length does not depend on n)."""
    try:
        prefix, size = _NPY_TEMPLATES[dtype]
    except KeyError:
        ref = _npy_header_reference(dtype, 0)
        prefix, size = ref[: ref.index(b"'shape': (") + len(b"'shape': (")], len(ref)
        _NPY_TEMPLATES[dtype] = prefix, size
    return (prefix + b"%d,), }" % n).ljust(size - 1) + b"\n"


def _npy_header_matches_numpy() -> bool:
    try:
        for t in (np.uint16, np.int32):
            for n in (0, 1, 9, 10, 99, 100, 12345):
                a = np.arange(n, dtype=t)
                want = _npy_save(a)
                if _npy_header(a.dtype, n) + a.tobytes() != want or _npy_header_reference(a.dtype, n) + a.tobytes() != want:
                    return False
        return True
    except Exception:
        return False


# np.save costs ~60 us per call (two per document); its header is a pure function of (dtype, n), so
# build it directly - unless this numpy writes something else, then use np.save itself.
_NPY_FAST = _npy_header_matches_numpy()


def npy_1d(data: bytes, dtype: np.dtype, n: int) -> bytes:
    """``np.save`` bytes of a 1-D array of `n` items of native-order `dtype` whose buffer is `data`."""
    if _NPY_FAST:
        return _npy_header(dtype, n) + data
    return _npy_save(np.frombuffer(data, dtype=dtype, count=n))


def _npy_bytes(array: np.ndarray) -> bytes:
    return npy_1d(array.tobytes(), array.dtype, len(array))


def encode_document(doc_id: int, sentences: list[list[int]], vocab_size: int) -> dict[str, Any]:
    """A webdataset sample dict (for `webdataset.TarWriter.write`) for one tokenized document."""
    ids = np.fromiter((t for s in sentences for t in s), dtype=ids_dtype(vocab_size))
    ends = np.cumsum([len(s) for s in sentences], dtype=np.int64).astype(np.int32)
    return {"__key__": doc_key(doc_id), "ids.npy": _npy_bytes(ids), "sents.npy": _npy_bytes(ends)}


@dataclass(frozen=True)
class Document:
    doc_id: int
    ids: np.ndarray          # int64 1-D
    sentence_ends: np.ndarray  # int64 1-D, cumulative

    def sentences(self) -> list[np.ndarray]:
        starts = np.concatenate([[0], self.sentence_ends[:-1]])
        return [self.ids[a:b] for a, b in zip(starts, self.sentence_ends)]


def decode_document(sample: dict[str, Any]) -> Document:
    """Decode a raw (undecoded bytes) webdataset sample into a Document."""
    try:
        ids = sample["ids.npy"]
        ends = sample["sents.npy"]
    except KeyError as missing:
        raise ShardFormatError(
            f"sample {sample.get('__key__')!r} in {sample.get('__url__')!r} lacks field {missing}"
        ) from None
    if isinstance(ids, (bytes, bytearray)):
        ids = np.load(io.BytesIO(ids), allow_pickle=False)
    if isinstance(ends, (bytes, bytearray)):
        ends = np.load(io.BytesIO(ends), allow_pickle=False)
    return Document(doc_id_from_key(sample["__key__"]), ids.astype(np.int64), ends.astype(np.int64))


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over what decides token ids: the vocab (token -> id) and the normalizer.

    Hashing tokenizer.json bytes would change with serialisation details; this does not.
    """
    vocab = sorted(tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    state = json.loads(tokenizer.to_str())
    payload = json.dumps(
        {"vocab": vocab, "normalizer": state.get("normalizer"), "pre_tokenizer": state.get("pre_tokenizer")},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class SplitInfo:
    shards: list[dict]          # [{"name": "train/shard-000000.tar", "documents": n, "sentences": n, "tokens": n, "bytes": n}]
    documents: int = 0
    sentences: int = 0
    tokens: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class Manifest:
    root: str
    tokenizer_file: str
    tokenizer_sha256: str
    vocab_size: int
    special_tokens: dict[str, int]   # {"[PAD]": 0, "[UNK]": 1, ...}
    splits: dict[str, SplitInfo]
    raw: dict

    def shard_urls(self, split: str) -> list[str]:
        if split not in self.splits:
            raise ShardFormatError(
                f"{os.path.join(self.root, MANIFEST_NAME)} has no split {split!r} (has {sorted(self.splits)})"
            )
        return [os.path.join(self.root, s["name"]) for s in self.splits[split].shards]

    def shard_documents(self, split: str) -> list[int]:
        return [int(s["documents"]) for s in self.splits[split].shards]


def load_manifest(root: str) -> Manifest:
    """Read ``<root>/manifest.json``; any problem is one ShardFormatError naming the file and key."""
    path = os.path.join(root, MANIFEST_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ShardFormatError(f"{path}: no manifest; is {root!r} a directory made by pretrain-prepare?") from None
    except json.JSONDecodeError as e:
        raise ShardFormatError(f"{path}: not valid JSON ({e})") from None
    if raw.get("format") != MANIFEST_FORMAT:
        raise ShardFormatError(f"{path}: format {raw.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    try:
        tok = raw["tokenizer"]
        splits = {
            name: SplitInfo(
                shards=list(s["shards"]),
                documents=int(s["documents"]),
                sentences=int(s["sentences"]),
                tokens=int(s["tokens"]),
                skipped=dict(s.get("skipped", {})),
            )
            for name, s in raw["splits"].items()
        }
        return Manifest(
            root=root,
            tokenizer_file=os.path.join(root, tok["file"]),
            tokenizer_sha256=tok["sha256"],
            vocab_size=int(tok["vocab_size"]),
            special_tokens={k: int(v) for k, v in tok["special_tokens"].items()},
            splits=splits,
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ShardFormatError(f"{path}: missing or malformed key {e}") from None
