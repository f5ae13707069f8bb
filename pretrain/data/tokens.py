"""Token-id tables the workers need, computed once per loader from the manifest and tokenizer.

Masking must know which ids are special (never masked, never drawn as random replacements) and
which WordPiece pieces continue a word (`##...`, for whole-word and span masking). Both come
from the tokenizer named by the manifest; the manifest's tokenizer hash is checked first so a
tokenizer swapped after `prepare` cannot silently re-map the shards' ids.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from pretrain.data.errors import DataError
from pretrain.shardformat import Manifest, tokenizer_fingerprint


@dataclass(frozen=True)
class TokenTable:
    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    is_special: np.ndarray        # bool [V]: special tokens (never masked)
    is_continuation: np.ndarray   # bool [V]: WordPiece "##" pieces
    replacement_ids: np.ndarray   # int64: non-special ids, the pool for random replacement


def load_tokenizer(manifest: Manifest):
    from tokenizers import Tokenizer

    path = manifest.tokenizer_file
    if not os.path.exists(path):
        raise DataError(f"{path}: tokenizer file named by the manifest does not exist")
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise DataError(f"{path}: cannot load tokenizer ({str(e).splitlines()[0]})") from None


def check_tokenizer(manifest: Manifest, tokenizer=None):
    """Refuse shards whose manifest hash differs from the tokenizer file it names."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(manifest)
    got = tokenizer_fingerprint(tokenizer)
    if got != manifest.tokenizer_sha256:
        raise DataError(
            f"{manifest.tokenizer_file}: tokenizer sha256 {got[:12]}... does not match the manifest's "
            f"{manifest.tokenizer_sha256[:12]}... (shards were tokenized with another tokenizer)"
        )
    return tokenizer


def check_vocab_size(manifest: Manifest, model_vocab_size: int) -> None:
    """The model's embedding must cover every id in the shards (it may be padded larger)."""
    if int(model_vocab_size) < manifest.vocab_size:
        raise DataError(
            f"{manifest.tokenizer_file}: tokenizer vocab_size {manifest.vocab_size} > model vocab_size "
            f"{model_vocab_size}; set model.vocab_size >= {manifest.vocab_size}"
        )


def token_table(manifest: Manifest, tokenizer=None) -> TokenTable:
    tokenizer = tokenizer if tokenizer is not None else check_tokenizer(manifest)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    size = max(manifest.vocab_size, max(vocab.values()) + 1)
    prefix = getattr(tokenizer.model, "continuing_subword_prefix", None) or "##"
    is_cont = np.zeros(size, dtype=bool)
    for tok, idx in vocab.items():
        if tok.startswith(prefix):
            is_cont[idx] = True
    special = manifest.special_tokens
    missing = [t for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]") if t not in special]
    if missing:
        raise DataError(f"{manifest.root}/manifest.json: tokenizer.special_tokens lacks {missing}")
    is_special = np.zeros(size, dtype=bool)
    is_special[list(special.values())] = True
    is_special[manifest.vocab_size:] = True   # ids past the tokenizer's vocab are never drawn
    return TokenTable(
        vocab_size=size,
        pad_id=special["[PAD]"],
        cls_id=special["[CLS]"],
        sep_id=special["[SEP]"],
        mask_id=special["[MASK]"],
        is_special=is_special,
        is_continuation=is_cont & ~is_special,
        replacement_ids=np.flatnonzero(~is_special).astype(np.int64),
    )
