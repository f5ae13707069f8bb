"""The WordPiece tokenizer: train one (BERT recipe) by streaming text, or load a tokenizer.json.

The result is what `transformers.BertTokenizerFast(tokenizer_file=...)` expects: BERT normalizer,
BERT pre-tokenizer, WordPiece with `##` continuations, [CLS]/[SEP] post-processor, WordPiece decoder,
and the special tokens at fixed ids [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 (shardformat relies on it).
"""
from __future__ import annotations

import os
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from pretrain.prepare.config import PrepareError, TokenizerConfig
from pretrain.shardformat import SPECIAL_TOKENS


def new_tokenizer(cfg: TokenizerConfig) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=cfg.strip_accents, lowercase=cfg.lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _add_post_processor(tok: Tokenizer) -> None:
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    """Train from an iterator (the trainer keeps word counts, never the corpus)."""
    tok = new_tokenizer(cfg)
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    _add_post_processor(tok)
    check_special_tokens(tok, "trained tokenizer")
    return tok


def load_tokenizer(path: str) -> Tokenizer:
    if not os.path.isfile(path):
        raise PrepareError(f"tokenizer.path={path}: no such file")
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise PrepareError(f"tokenizer.path={path}: not a tokenizers JSON file ({str(e).splitlines()[0]})") from None
    check_special_tokens(tok, path)
    return tok


def check_special_tokens(tok: Tokenizer, where: str) -> None:
    for want, token in enumerate(SPECIAL_TOKENS):
        got = tok.token_to_id(token)
        if got != want:
            raise PrepareError(f"{where}: special token {token} has id {got}, expected {want}")


def is_lowercase(tok: Tokenizer) -> bool:
    import json

    norm = json.loads(tok.to_str()).get("normalizer") or {}
    return bool(norm.get("lowercase", False))
