"""The WordPiece tokenizer: train one (BERT recipe) by streaming text, or load a tokenizer.json.

The result is what `transformers.BertTokenizerFast(tokenizer_file=...)` expects: BERT normalizer,
BERT pre-tokenizer, WordPiece with `##` continuations, [CLS]/[SEP] post-processor, WordPiece decoder,
and the special tokens at fixed ids [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 (shardformat relies on it).
"""
from __future__ import annotations

import os
import json
from typing import Callable, Iterable

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


def train_tokenizer(texts: Callable[[], Iterable[str]], cfg: TokenizerConfig) -> Tokenizer:
    """Train from a text source read twice (the trainer keeps word counts, never the corpus)."""
    tok = train_wordpiece(new_tokenizer(cfg), texts, cfg.vocab_size, cfg.min_frequency)
    _add_post_processor(tok)
    check_special_tokens(tok, "trained tokenizer")
    return tok


def train_wordpiece(tok: Tokenizer, texts: Callable[[], Iterable[str]], vocab_size: int, min_frequency: int) -> Tokenizer:
    """WordPiece training that gives the same vocabulary on every run.

    tokenizers' trainer (0.23, issue huggingface/tokenizers#1794) numbers the `##c` continuation
    tokens in hash-map order, and breaks ties between equally frequent merges by those numbers, so
    two runs on one corpus differ by a few tokens (and tokenize differently). Workaround: a first,
    cheap pass over `texts()` collects the characters, and every `##c` the corpus can make is given
    to the trainer up front (as extra special tokens, numbered in sorted order); the extra entries
    are then dropped from the added tokens, so they stay ordinary vocabulary. Costs one more read
    of the tokenizer sample; a character that never continues a word costs one vocabulary slot.
    """
    chars: set[str] = set()
    for text in texts():
        chars.update(text)
    continuing = continuation_tokens(tok, chars)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*SPECIAL_TOKENS, *continuing],
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(texts(), trainer=trainer)
    state = json.loads(tok.to_str())
    extra = set(continuing)
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] not in extra]
    return Tokenizer.from_str(json.dumps(state))


def continuation_tokens(tok: Tokenizer, chars: Iterable[str]) -> list[str]:
    """Sorted `##d` for every character d that a raw character of `chars` becomes after a letter,
    once normalised and pre-tokenized: none for whitespace, punctuation or CJK (words of their own)."""
    out = set()
    for c in chars:
        text = tok.normalizer.normalize_str("a" + c) if tok.normalizer else "a" + c
        words = [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(text)] if tok.pre_tokenizer else [text]
        if words and words[0].startswith("a"):
            out.update("##" + d for d in words[0][1:])
    return sorted(out)


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
