"""One config for BERT and ALBERT encoders (field names follow the papers / HF where they can)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class ModelConfig:
    arch: str = "bert"                  # "bert" | "albert"
    vocab_size: int = 30522             # 0 / None at launch = take it from the data manifest
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    hidden_act: str = "gelu"            # "gelu" | "gelu_new" | "relu"
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    # ALBERT: factorized embeddings and cross-layer sharing. None -> hidden_size (BERT).
    embedding_size: Optional[int] = None
    num_hidden_groups: int = 1          # ALBERT only: number of distinct layer groups
    inner_group_num: int = 1            # ALBERT only: layers per group
    sentence_head: str = "sop"          # "sop" | "nsp" | "none"
    gradient_checkpointing: bool = False
    init_from: Optional[str] = None     # HF-format directory to start from (continued pretraining)
