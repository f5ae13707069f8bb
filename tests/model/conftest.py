"""Fixtures shared by the model tests."""
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, as pretrain.prepare writes them


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    """A real WordPiece tokenizer trained on ~20 KB of Python's own documentation."""
    import pydoc_data.topics

    text = "\n".join(pydoc_data.topics.topics.values())[:20000]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator([text], trainers.WordPieceTrainer(vocab_size=400, special_tokens=SPECIALS))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


