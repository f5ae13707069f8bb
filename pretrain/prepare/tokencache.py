"""Exact, cached tokenization for BERT WordPiece tokenizers: the same ids as `encode_batch_fast`, faster.

`tokenizers` runs at only ~2 MB of text per CPU-second here (it tracks character alignments through
normalization and pre-tokenization, which `prepare` never uses), while text is very repetitive:
~300k whitespace-separated chunks in 2 MB of English but only ~30k distinct ones. So each distinct
chunk is tokenized once per worker and remembered as the bytes of its ids.

Why this is exact, for a BertNormalizer + BertPreTokenizer + WordPiece tokenizer (checked on the
tokenizer's JSON; any other tokenizer uses `encode_batch_fast` directly):
  - ' ', '\\t', '\\n', '\\r' become a split point and produce no token, and every step is local to a
    character (the normalizer's clean-up, CJK padding, NFD + accent removal and lowercasing act per
    character; an added token cannot span them since none contains whitespace - checked), so
    ``ids(a + " " + b) == ids(a) + ids(b)``: a text's ids are the concatenation of its chunks' ids;
  - a new chunk that is printable ASCII (no control characters, no added token in it) is
    normalized by ``str.lower`` (or left as is when the tokenizer is cased) and pre-tokenized by one
    regex (runs of letters/digits; every other printable ASCII character is BERT punctuation and a
    word on its own); each word goes through the tokenizer's own WordPiece model (`model.tokenize`)
    and is cached too;
  - any other new chunk (non-ASCII, control characters, added tokens) goes through the complete
    `tokenizers` pipeline: all such chunks of a batch joined by spaces in one `encode` call, and the
    ids are assigned back to chunks by their character offsets.
The caches are bounded (cleared when full, between batches), so memory does not grow with the corpus, and they
never change a result, so the output does not depend on which worker saw what first.
`tests/prepare/test_tokencache.py` compares against `encode_batch_fast` on adversarial text.
"""
from __future__ import annotations

import array
import itertools
import json
import re
from typing import Optional

import numpy as np
from tokenizers import Tokenizer

_CHUNK = re.compile(r"[^ \t\n\r]+")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# BERT pre-tokenization of printable ASCII (plus \t \n \r): runs of letters/digits, and every other
# non-whitespace character (all are BERT punctuation) on its own.
_WORDS_LOWER = re.compile(r"[a-z0-9]+|[^a-z0-9 \t\n\r]")
_WORDS_CASED = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9 \t\n\r]")
_ARRAY_CODE = {np.dtype(np.uint16): "H", np.dtype(np.int32): "i"}


def why_not_cacheable(tok: Tokenizer) -> Optional[str]:
    """None if `CachedEncoder` is exact for this tokenizer, else the reason it falls back."""
    state = json.loads(tok.to_str())
    if state.get("truncation") is not None or state.get("padding") is not None:
        return "truncation/padding enabled"
    norm = state.get("normalizer")
    if norm is not None and norm.get("type") != "BertNormalizer":
        return f"normalizer {norm.get('type')}"
    pre = state.get("pre_tokenizer") or {}
    if pre.get("type") != "BertPreTokenizer":
        return f"pre_tokenizer {pre.get('type')}"
    model = state.get("model") or {}
    if model.get("type") != "WordPiece":
        return f"model {model.get('type')}"
    post = state.get("post_processor")
    if post is not None and post.get("type") not in ("TemplateProcessing", "BertProcessing"):
        return f"post_processor {post.get('type')}"
    for t in state.get("added_tokens") or []:
        content = t.get("content", "")
        if not content or any(c.isspace() or c in "\x1c\x1d\x1e\x1f\x85" for c in content):
            return f"added token {content!r} is empty or contains whitespace"
    return None


class CachedEncoder:
    """``encode(texts)`` -> per text, the native-order bytes of its token ids (no special tokens)."""

    def __init__(self, tok: Tokenizer, dtype, max_entries: int = 1 << 17):
        self.tok = tok
        self.dtype = np.dtype(dtype)
        self.code = _ARRAY_CODE[self.dtype]
        self.max_entries = max_entries
        self.reason = why_not_cacheable(tok)
        state = json.loads(tok.to_str())
        norm = state.get("normalizer") or {}
        self.lowercase = bool(norm.get("lowercase"))
        self.plain_re = _WORDS_LOWER if self.lowercase else _WORDS_CASED
        # Chunks containing (a lowercased form of) an added token, raw or normalized, take the full
        # pipeline; a superset of what the tokenizer can match in ASCII text, which is all we need.
        forms = set()
        for t in state.get("added_tokens") or []:
            forms.add(t["content"].lower())
            if tok.normalizer is not None:
                forms.add(tok.normalizer.normalize_str(t["content"]).lower())
        forms.discard("")
        self.added_re = re.compile("|".join(re.escape(f) for f in sorted(forms))) if forms else None
        self.model = tok.model
        self.max_word_chars = int((state.get("model") or {}).get("max_input_chars_per_word", 100))
        self.chunks: dict[str, bytes] = {}
        self.words: dict[str, bytes] = {}
        self._vocab_words: dict[str, bytes] = {}
        if self.reason is None:
            self._vocab_words = self._words_in_vocab(tok)
            self.words.update(self._vocab_words)

    def _words_in_vocab(self, tok: Tokenizer) -> dict[str, bytes]:
        """Pre-tokenized words that are vocab entries: WordPiece maps each to its own id.

        Greedy longest-match-first tries the whole word first, so a word of at most
        max_input_chars_per_word characters that is in the vocab is that one token. These are the
        frequent words, so a worker's word cache starts warm instead of calling the model for each.
        """
        out = {}
        for w, i in tok.get_vocab(with_added_tokens=False).items():
            if w.isascii() and len(w) <= self.max_word_chars and self.plain_re.fullmatch(w) is not None:
                out[w] = array.array(self.code, [i]).tobytes()
        return out

    @property
    def cached(self) -> bool:
        return self.reason is None

    def encode(self, texts: list[str]) -> list[bytes]:
        if not texts:
            return []
        if not self.cached:
            return [array.array(self.code, e.ids).tobytes()
                    for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]
        # Bounded memory: caches start over when full, only between batches (a batch's lookups
        # must find what it added). A batch adds at most its own distinct chunks/words.
        if len(self.chunks) > self.max_entries:
            self.chunks.clear()
        if len(self.words) > self.max_entries + len(self._vocab_words):
            self.words.clear()
            self.words.update(self._vocab_words)
        out: list[bytes] = [b""] * len(texts)
        # Printable-ASCII texts (the bulk of English text) go straight to words; the rest by chunks.
        plain, plain_at, rest, rest_at = [], [], [], []
        lowercase, control, added_re = self.lowercase, _ASCII_CONTROL, self.added_re
        for i, t in enumerate(texts):
            if t.isascii() and control.search(t) is None:
                norm = t.lower() if lowercase else t
                if added_re is None or added_re.search(norm if lowercase else t.lower()) is None:
                    plain.append(norm)
                    plain_at.append(i)
                    continue
            rest.append(t)
            rest_at.append(i)
        if plain:
            for i, b in zip(plain_at, self._encode_plain(plain)):
                out[i] = b
        if rest:
            for i, b in zip(rest_at, self._encode_chunked(rest)):
                out[i] = b
        return out

    def _plain_ascii(self, t: str) -> bool:
        """ASCII `t` has no control character (other than \\t \\n \\r) and no added token."""
        if _ASCII_CONTROL.search(t) is not None:
            return False
        return self.added_re is None or self.added_re.search(t.lower()) is None

    def _encode_plain(self, normalized: list[str]) -> list[bytes]:
        """Printable ASCII, already lowercased if the tokenizer does.

        Whitespace here is only ' ', \\t, \\n, \\r, so `str.split` finds the chunks; a new chunk is
        pre-tokenized by one regex (runs of letters/digits, every other character alone) into words.
        """
        chunk_lists = [t.split() for t in normalized]
        cache = self.chunks
        missing = list(set().union(*chunk_lists).difference(cache))
        if missing:
            words_re = self.plain_re
            word_lists = [words_re.findall(c) for c in missing]
            self._add_words(set().union(*word_lists))
            get = self.words.__getitem__
            for c, ws in zip(missing, word_lists):
                cache[c] = b"".join(map(get, ws))
        get = cache.__getitem__
        return [b"".join(map(get, cs)) for cs in chunk_lists]

    def _add_words(self, distinct: set[str]) -> None:
        words = self.words
        missing = distinct.difference(words)
        code, tokenize = self.code, self.model.tokenize
        for w in missing:
            words[w] = array.array(code, [t.id for t in tokenize(w)]).tobytes()

    def _encode_chunked(self, texts: list[str]) -> list[bytes]:
        split = [_CHUNK.findall(t) for t in texts]
        missing = set().union(*split).difference(self.chunks)
        if missing:
            self._fill(missing)
        cache = self.chunks
        get = cache.__getitem__
        return [b"".join(map(get, cs)) for cs in split]

    def _fill(self, missing: set[str]) -> None:
        plain = [c for c in missing if c.isascii() and self._plain_ascii(c)]
        if plain:
            normalized = [c.lower() for c in plain] if self.lowercase else plain
            for c, b in zip(plain, self._encode_plain(normalized)):
                self.chunks[c] = b
        full = sorted(missing.difference(plain))
        if full:
            self._fill_full(full)

    def _fill_full(self, chunks: list[str]) -> None:
        """Chunks the ASCII shortcut does not cover: one real `encode` of them all, split by offsets."""
        enc = self.tok.encode(" ".join(chunks), add_special_tokens=False)
        ids = array.array(self.code, enc.ids).tobytes()
        starts = np.fromiter(itertools.accumulate((len(c) + 1 for c in chunks[:-1]), initial=0),
                             dtype=np.int64, count=len(chunks))
        token_starts = np.fromiter((o[0] for o in enc.offsets), dtype=np.int64, count=len(enc.ids))
        owner = np.searchsorted(starts, token_starts, side="right") - 1
        if len(owner) and (owner[0] < 0 or (np.diff(owner) < 0).any()):
            raise AssertionError("tokenizer offsets out of order; cannot assign ids to chunks")
        bounds = np.searchsorted(owner, np.arange(len(chunks) + 1), side="left") * self.dtype.itemsize
        for c, a, b in zip(chunks, bounds[:-1].tolist(), bounds[1:].tolist()):
            self.chunks[c] = ids[a:b]
