"""CachedEncoder gives exactly `encode_batch_fast`'s ids, on adversarial text and several tokenizers."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
from tokenizers import Tokenizer, normalizers, pre_tokenizers

from pretrain.prepare.config import TokenizerConfig
from pretrain.prepare.tokencache import CachedEncoder, why_not_cacheable
from pretrain.prepare.tokenizer import train_tokenizer

# Characters where a shortcut could go wrong: ASCII controls and every ASCII punctuation, Unicode
# whitespace and controls, combining marks, case mappings that change length, CJK, astral
# characters, the special tokens, and words longer than WordPiece's 100-character limit.
PIECES = (
    list("abcXYZ019 .,;:!?'\"()[]{}<>-_/\\|@#$%^&*+=~`\t\n\r")
    + ["\x00", "\x01", "\x0b", "\x0c", "\x1c", "\x1f", "\x7f", "\x85", "\xa0", "\u2028", "\u200b", "\u3000",
       "\ufeff", "\ufffd", "\u0301", "e\u0301", "é", "É", "Straße", "İ", "Σ", "ς", "ǅ", "ﬁ", "Å", "Ω", "½", "²",
       "日本", "中", "한", "😀", "👍🏽", "\U0001d400", "—", "…", "“", "’", "[MASK]", "[mask]", "[CLS]", "[SEP]",
       "[PAD]", "[UNK]", "[", "]", "MASK", "x" * 101, "ab" * 51, "y" * 100]
    + ["the", "The", "tokenizer", "Python", "function", "returns", "value", "class", "object"] * 6
)


def _texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randrange(0, 40)
        out.append("".join(rng.choice(PIECES) + (" " if rng.random() < 0.4 else "") for _ in range(k)))
    return out


@pytest.fixture(scope="module")
def tokenizers_under_test(prepared_demo):
    demo = Tokenizer.from_file(os.path.join(prepared_demo, "tokenizer.json"))
    texts = _texts(0, 400) + ["The quick brown fox jumps over the lazy dog. Café naïve Straße."] * 20
    cased = train_tokenizer(lambda: texts, TokenizerConfig(vocab_size=300, lowercase=False, min_frequency=1))
    accents = train_tokenizer(lambda: texts, TokenizerConfig(vocab_size=300, lowercase=False, strip_accents=True,
                                                           min_frequency=1))
    return {"demo": demo, "cased": cased, "strip_accents_cased": accents}


@pytest.mark.parametrize("name", ["demo", "cased", "strip_accents_cased"])
def test_cached_ids_equal_encode_batch_fast(tokenizers_under_test, name):
    tok = tokenizers_under_test[name]
    texts = _texts(1, 3000)
    want = [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
    enc = CachedEncoder(tok, np.uint16, max_entries=500)  # small: the clear-when-full path runs too
    assert enc.cached, enc.reason
    got = []
    for i in range(0, len(texts), 700):  # several batches: later ones hit the cache
        got += enc.encode(texts[i : i + 700])
    bad = [t for t, g, w in zip(texts, got, want) if np.frombuffer(g, np.uint16).tolist() != w]
    assert not bad, bad[:3]


def test_int32_ids(tokenizers_under_test):
    tok = tokenizers_under_test["demo"]
    texts = _texts(2, 200)
    want = [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
    got = CachedEncoder(tok, np.int32).encode(texts)
    assert [np.frombuffer(g, np.int32).tolist() for g in got] == want


def test_other_tokenizers_fall_back(tokenizers_under_test):
    tok = Tokenizer.from_str(tokenizers_under_test["demo"].to_str())
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert why_not_cacheable(tok) == "pre_tokenizer Whitespace"
    tok = Tokenizer.from_str(tokenizers_under_test["demo"].to_str())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    assert why_not_cacheable(tok) == "normalizer Sequence"
    tok = Tokenizer.from_str(tokenizers_under_test["demo"].to_str())
    tok.enable_truncation(8)
    assert why_not_cacheable(tok) == "truncation/padding enabled"
    texts = _texts(3, 50)
    want = [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
    assert [np.frombuffer(g, np.uint16).tolist() for g in CachedEncoder(tok, np.uint16).encode(texts)] == want
    tok = Tokenizer.from_str(tokenizers_under_test["demo"].to_str())
    tok.add_tokens(["new york"])
    assert "whitespace" in why_not_cacheable(tok)
