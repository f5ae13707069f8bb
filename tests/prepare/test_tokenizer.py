"""Tokenizer training is reproducible: the same corpus gives the same vocabulary on every run
(tokenizers' own trainer does not, huggingface/tokenizers#1794), and the workaround leaves the
`##` continuation pieces as ordinary vocabulary."""
from __future__ import annotations

import glob
import os

from tokenizers import Tokenizer

from pretrain.prepare.config import TokenizerConfig
from pretrain.prepare.tokenizer import new_tokenizer, train_tokenizer
from pretrain.shardformat import SPECIAL_TOKENS


def _demo_texts(demo_corpus: str) -> list[str]:
    path = glob.glob(os.path.join(demo_corpus, "*.txt"))[0]
    return open(path, encoding="utf-8").read().split("\n\n")


def test_training_twice_gives_the_same_tokenizer(demo_corpus):
    texts = _demo_texts(demo_corpus)
    cfg = TokenizerConfig(vocab_size=2000)
    first, *others = [train_tokenizer(lambda: texts, cfg).to_str() for _ in range(3)]
    # Before the workaround, 3 trainings on this text gave 3 different vocabularies.
    assert all(other == first for other in others)


def test_continuation_pieces_are_ordinary_vocabulary(demo_corpus):
    texts = _demo_texts(demo_corpus)
    tok = train_tokenizer(lambda: texts, TokenizerConfig(vocab_size=2000))
    vocab = tok.get_vocab()
    assert tok.get_vocab_size() == 2000
    assert [vocab[t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert "##e" in vocab and "##s" in vocab
    assert [t.content for t in tok.get_added_tokens_decoder().values()] == list(SPECIAL_TOKENS)
    # "##e" in the text is two punctuation marks and a letter, not the piece "##e".
    assert tok.encode("##e", add_special_tokens=False).tokens == ["#", "#", "e"]
    ids = tok.encode("tokenizers", add_special_tokens=False).ids
    assert len(ids) > 1 and tok.decode(ids, skip_special_tokens=True) == "tokenizers"
    reloaded = Tokenizer.from_str(tok.to_str())
    assert reloaded.encode("the tokenizers").ids == tok.encode("the tokenizers").ids


def test_only_characters_that_continue_words_get_a_piece():
    from pretrain.prepare.tokenizer import continuation_tokens

    tok = new_tokenizer(TokenizerConfig(vocab_size=100))
    got = continuation_tokens(tok, "aB,. \t日é")
    assert got == ["##a", "##b", "##e"]  # lowercased, accents stripped; punctuation, space, CJK never continue
