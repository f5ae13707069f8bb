"""One config for every encoder architecture of the registry (field names follow the papers / HF).

Which fields an architecture reads is its own business (pretrain/model/registry.py lists the
architectures; each one's `validate` refuses the fields it cannot honour, in one line).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class ModelConfig:
    arch: str = "bert"                  # a name of the registry: bert | albert | modernbert
    vocab_size: int = 30522             # 0 / None at launch = take it from the data manifest
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072       # modernbert: the GeGLU width (its input projection is 2x this)
    max_position_embeddings: int = 512
    type_vocab_size: int = 2            # bert/albert only (modernbert has no segment embeddings)
    hidden_dropout: float = 0.1         # modernbert: embedding and MLP dropout
    attention_dropout: float = 0.1
    hidden_act: str = "gelu"            # "gelu" | "gelu_new" | "relu" (modernbert: the GeGLU and head activation)
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
    # How attention runs (every architecture): on the real tokens only (unpad=true: the batch's
    # tokens flattened, sequences delimited by cu_seqlens) or on padded rows with a mask.
    # attention_backend (pretrain/model/attention.py): auto = on CUDA with unpad, FlashAttention's
    # varlen kernel where flash_attn works, else "varlen" (PyTorch's own kernels on the real
    # tokens: nested-tensor SDPA, FlexAttention for local windows); on the CPU and on padded
    # rows "sdpa" (masked scaled_dot_product_attention). "sdpa" / "flash" / "varlen" force one.
    unpad: bool = True
    attention_backend: str = "auto"
    # ModernBERT-style models (pre-LN, bias-free, GeGLU, rotary, alternating attention).
    global_attn_every_n_layers: int = 1   # layer i attends globally when i % n == 0, else locally
    local_attention: int = 0              # local window (tokens, total); 0 = every layer global
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    linear_bias: bool = True              # biases in the encoder's Linears (modernbert: false)
    norm_bias: bool = True                # biases in the LayerNorms (modernbert: false)
    initializer_cutoff_factor: float = 2.0  # modernbert: weights ~ N(0, std) truncated at +-factor*std
