"""Last stage of the ordered-layer form: the final norm, the MLM head (sparse) and the SOP/NSP head."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from .activations import activation
from .attention import AttentionContext
from .config import ModelConfig


class PretrainingOutput(NamedTuple):
    """A NamedTuple, not a dataclass: DeepSpeed ZeRO-3 finds the tensors in tuples/dicts only
    (its backward hooks never fire for tensors hidden in other objects).

    mlm_logits: [n_masked, V] at positions where labels != -100 (row-major over [B, L]),
    or [B, L, V] when all positions were requested. mlm_labels: [n_masked] (or [B, L] / None
    alongside all-position logits). sentence_logits: one row per example: [B, 2] when each row
    holds one example, [n_examples, 2] for packed rows (row-major order of their first tokens),
    or None (sentence_head="none"). sentence_index: None, or (packed rows, and always in the
    pipeline form) the flat indices into [B*L] of the examples whose logits these are, so the
    objective picks their labels from a [B, L] `sentence_label`."""

    mlm_logits: torch.Tensor
    mlm_labels: Optional[torch.Tensor]
    sentence_logits: Optional[torch.Tensor]
    sentence_index: Optional[torch.Tensor] = None


class MLMHead(nn.Module):
    """dense -> act -> LayerNorm -> decoder (tied to the word embeddings) + separate bias.

    BERT transforms hidden -> hidden; ALBERT hidden -> embedding_size, so the tied decoder is
    [V, embedding_size] either way; ModernBERT's dense and norm are bias-free. `decoder_weight` is
    *the same Parameter* as the word-embedding table (both names appear in state_dict, as in HF).
    """

    def __init__(self, cfg: ModelConfig, word_embeddings: nn.Embedding):
        super().__init__()
        emb = cfg.embedding_size or cfg.hidden_size
        self.dense = nn.Linear(cfg.hidden_size, emb, bias=cfg.linear_bias)
        self.act = activation(cfg.hidden_act)
        self.norm = nn.LayerNorm(emb, eps=cfg.layer_norm_eps, bias=cfg.norm_bias)
        self.decoder_weight = word_embeddings.weight
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> logits [..., V]."""
        x = self.norm(self.act(self.dense(hidden)))
        return nn.functional.linear(x, self.decoder_weight, self.bias)


class SentenceHead(nn.Module):
    """Pooler (dense + tanh on an example's first token) -> 2-way classifier, for SOP or NSP.
    [N, H] -> [N, 2]. ALBERT applies dropout before the classifier (HF's classifier_dropout_prob)."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0):
        super().__init__()
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cfg.hidden_size, 2)

    def forward(self, first_tokens: torch.Tensor) -> torch.Tensor:
        pooled = torch.tanh(self.pooler(first_tokens))
        return self.classifier(self.dropout(pooled))


class PretrainingHeads(nn.Module):
    """Hidden states -> PretrainingOutput.

    Called as `heads(hidden, ctx, labels)` by the model (any layout of the context), or as
    `heads((hidden [B,L,H], position_ids, attention_mask, labels))` in the pipeline form.
    labels given: gather the rows with labels != -100 *before* the transform and decoder, so the
    [*, V] matmul (the most expensive op at V=30522 and short sequences) runs on ~15% of tokens
    (at the batch's `masked_index` when the loader gave one: no device sync).
    labels None: logits at every position, [B, L, V] (HF comparisons, fill-mask; pads of an
    unpadded context get the logits of a zero hidden state).
    """

    def __init__(self, cfg: ModelConfig, word_embeddings: nn.Embedding, final_norm: Optional[nn.Module] = None,
                 sentence_dropout: float = 0.0):
        super().__init__()
        self.final_norm = final_norm if final_norm is not None else nn.Identity()
        self.mlm = MLMHead(cfg, word_embeddings)
        self.sentence = SentenceHead(cfg, sentence_dropout) if cfg.sentence_head != "none" else None
        self.packed_rows = True   # pipeline form only: see PretrainingModel.set_packed_rows

    def forward(self, inputs, ctx: Optional[AttentionContext] = None, labels: Optional[torch.Tensor] = None,
                ) -> PretrainingOutput:
        if ctx is None:
            hidden, position_ids, attention_mask, labels = inputs
            ctx = AttentionContext(attention_mask, position_ids if self.packed_rows else None, hidden, unpad=False)
        else:
            hidden = inputs
        hidden = self.final_norm(hidden)
        sentence_logits = sentence_index = None
        if self.sentence is not None:
            sentence_logits = self.sentence(ctx.first_tokens(hidden))
            if ctx.packed:
                sentence_index = ctx.example_starts()
        if labels is None:
            return PretrainingOutput(self.mlm(ctx.to_padded(hidden)), None, sentence_logits, sentence_index)
        masked_hidden, masked_labels = ctx.labelled(hidden, labels)
        return PretrainingOutput(self.mlm(masked_hidden), masked_labels, sentence_logits, sentence_index)
