"""Last stage of the ordered-layer form: the MLM head (sparse) and the SOP/NSP head."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from .activations import activation
from .config import ModelConfig

IGNORE_INDEX = -100


class PretrainingOutput(NamedTuple):
    """A NamedTuple, not a dataclass: DeepSpeed ZeRO-3 finds the tensors in tuples/dicts only
    (its backward hooks never fire for tensors hidden in other objects).

    mlm_logits: [n_masked, V] at positions where labels != -100 (row-major over [B, L]),
    or [B, L, V] when all positions were requested. mlm_labels: [n_masked] (or [B, L] / None
    alongside all-position logits). sentence_logits: [B, 2] or None (sentence_head="none")."""

    mlm_logits: torch.Tensor
    mlm_labels: Optional[torch.Tensor]
    sentence_logits: Optional[torch.Tensor]


class MLMHead(nn.Module):
    """dense -> act -> LayerNorm -> decoder (tied to the word embeddings) + separate bias.

    BERT transforms hidden -> hidden; ALBERT hidden -> embedding_size, so the tied decoder is
    [V, embedding_size] either way. `decoder_weight` is *the same Parameter* as
    `embeddings.word_embeddings.weight` (both names appear in state_dict, as in HF).
    """

    def __init__(self, cfg: ModelConfig, word_embeddings: nn.Embedding):
        super().__init__()
        emb = cfg.embedding_size or cfg.hidden_size
        self.dense = nn.Linear(cfg.hidden_size, emb)
        self.act = activation(cfg.hidden_act)
        self.norm = nn.LayerNorm(emb, eps=cfg.layer_norm_eps)
        self.decoder_weight = word_embeddings.weight
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> logits [..., V]."""
        x = self.norm(self.act(self.dense(hidden)))
        return nn.functional.linear(x, self.decoder_weight, self.bias)


class SentenceHead(nn.Module):
    """Pooler (dense + tanh on [CLS]) -> 2-way classifier, for SOP or NSP. [B,L,H] -> [B,2].
    ALBERT applies dropout before the classifier (HF's classifier_dropout_prob); BERT does not."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.hidden_dropout if cfg.arch == "albert" else 0.0)
        self.classifier = nn.Linear(cfg.hidden_size, 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        pooled = torch.tanh(self.pooler(hidden[:, 0]))
        return self.classifier(self.dropout(pooled))


class PretrainingHeads(nn.Module):
    """(hidden [B,L,H], key_mask, labels) -> PretrainingOutput.

    labels given: gather the rows with labels != -100 *before* the transform and decoder, so the
    [*, V] matmul (the most expensive op at V=30522 and short sequences) runs on ~15% of tokens.
    labels None: logits at every position, [B, L, V] (HF comparisons, fill-mask).
    """

    def __init__(self, cfg: ModelConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.mlm = MLMHead(cfg, word_embeddings)
        self.sentence = SentenceHead(cfg) if cfg.sentence_head != "none" else None

    def forward(self, inputs) -> PretrainingOutput:
        hidden, _key_mask, labels = inputs
        sentence_logits = self.sentence(hidden) if self.sentence is not None else None
        if labels is None:
            return PretrainingOutput(self.mlm(hidden), None, sentence_logits)
        flat_labels = labels.reshape(-1)
        picked = torch.nonzero(flat_labels != IGNORE_INDEX).squeeze(1)
        masked_hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, picked)
        return PretrainingOutput(self.mlm(masked_hidden), flat_labels.index_select(0, picked), sentence_logits)
