"""Stage 0 of the ordered-layer form: token ids -> hidden states (plus the carried mask/labels)."""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout (BERT/ALBERT).

    ALBERT factorises the embedding: tables are `embedding_size` wide and a Linear projects to
    `hidden_size` (HF keeps that projection in the encoder; we keep it here so every encoder layer
    has the same input and output width, which the pipeline form needs).

    Input tuple:  (input_ids [B,L] int64, token_type_ids [B,L] int64 | None,
                   attention_mask [B,L] int | None, labels [B,L] int64 | None)
    Output tuple: (hidden [B,L,H], key_mask [B,1,1,L] bool | None, labels)
    The key mask is built once here and reused by every layer: broadcasting inside SDPA means no
    [B,heads,L,L] mask is materialised by us.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        emb = cfg.embedding_size or cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, emb, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, emb)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, emb)
        self.norm = nn.LayerNorm(emb, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.projection = nn.Linear(emb, cfg.hidden_size) if emb != cfg.hidden_size or cfg.arch == "albert" else None

    def forward(self, inputs):
        input_ids, token_type_ids, attention_mask, labels = inputs
        seq_len = input_ids.shape[1]
        positions = torch.arange(seq_len, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        x = self.dropout(self.norm(x))
        if self.projection is not None:
            x = self.projection(x)
        key_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        return x, key_mask, labels
