"""BERT/ALBERT <-> transformers' `BertForPreTraining` / `AlbertForPreTraining`: config and
state-dict conversion (both directions, exact up to float rounding). The registry points
`bert` and `albert` here (pretrain/model/bert.py); pretrain/hf/convert.py dispatches.

Our fused `attention.qkv` (rows query|key|value) is split into / concatenated from HF's three
projections; everything else is a renaming. The MLM decoder weight is the word-embedding table in
both models (tied); HF's `decoder.bias` and `predictions.bias` are one vector.
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain.model.config import ModelConfig


QKV = ("query", "key", "value")


def export_class(cfg: ModelConfig):
    """The transformers class an export of `cfg` is (both heads)."""
    from transformers import AlbertForPreTraining, BertForPreTraining

    return BertForPreTraining if cfg.arch == "bert" else AlbertForPreTraining


def import_class(model_type: str):
    """The transformers class whose checkpoints of `model_type` we read (any *ForMaskedLM /
    *ForPreTraining / base model loads into it; absent heads are initialised)."""
    return export_class(ModelConfig(arch=model_type))


def finetune_spec(model_type: str):
    from .finetune_spec import FinetuneSpec

    if model_type == "albert":
        return FinetuneSpec(
            layer_classes=("AlbertLayer",), attention_classes=("AlbertAttention",),
            output_projections=(("AlbertAttention", "dense"), ("AlbertLayer", "ffn_output")),
            lora_targets=("query", "value"), side_input="embeddings", side_output="encoder",
            hidden_dropout_keys=("hidden_dropout_prob", "classifier_dropout_prob"),
            attention_dropout_keys=("attention_probs_dropout_prob",))
    return FinetuneSpec(
        layer_classes=("BertLayer",), attention_classes=("BertSelfAttention",),
        output_projections=(("BertSelfOutput", "dense"), ("BertOutput", "dense")),
        lora_targets=("query", "value"), side_input="embeddings", side_output="encoder",
        hidden_dropout_keys=("hidden_dropout_prob",), attention_dropout_keys=("attention_probs_dropout_prob",))


def import_may_lack(key: str) -> bool:
    """Weights an imported directory may lack: the sentence head (pooler and classifier), which our
    import initialises fresh (a *ForMaskedLM checkpoint has none), and bookkeeping buffers."""
    return (key.endswith(("position_ids", "token_type_ids")) or "seq_relationship" in key or "sop_classifier" in key
            or ".pooler" in key)


def allowed_missing(key: str, cfg: ModelConfig) -> bool:
    """Keys transformers' export model may lack from our state dict: bookkeeping buffers, the
    sentence head when we have none (and then its pooler)."""
    headless = cfg.sentence_head == "none"
    return (key.endswith("position_ids") or key.endswith("token_type_ids") or "seq_relationship" in key
            or "sop_classifier" in key or (headless and ".pooler." in key))


def to_hf_config(cfg: ModelConfig, special_ids: dict | None = None):
    """ModelConfig -> transformers BertConfig / AlbertConfig with the same shapes and numerics
    (special_ids: unused, BERT's config names only the pad id)."""
    from transformers import AlbertConfig, BertConfig

    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, hidden_act=cfg.hidden_act,
        hidden_dropout_prob=cfg.hidden_dropout, attention_probs_dropout_prob=cfg.attention_dropout,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        initializer_range=cfg.initializer_range, layer_norm_eps=cfg.layer_norm_eps, pad_token_id=cfg.pad_token_id,
    )
    if cfg.arch == "bert":
        return BertConfig(**common, architectures=["BertForPreTraining"])
    return AlbertConfig(
        **common, embedding_size=cfg.embedding_size or cfg.hidden_size, num_hidden_groups=cfg.num_hidden_groups,
        inner_group_num=cfg.inner_group_num, classifier_dropout_prob=cfg.hidden_dropout,
        architectures=["AlbertForPreTraining"],
    )


def from_hf_config(hf_config) -> ModelConfig:
    """transformers BertConfig / AlbertConfig -> ModelConfig (arch from model_type)."""
    arch = hf_config.model_type
    cfg = ModelConfig(
        arch=arch, vocab_size=hf_config.vocab_size, hidden_size=hf_config.hidden_size,
        num_layers=hf_config.num_hidden_layers, num_heads=hf_config.num_attention_heads,
        intermediate_size=hf_config.intermediate_size, max_position_embeddings=hf_config.max_position_embeddings,
        type_vocab_size=hf_config.type_vocab_size, hidden_dropout=hf_config.hidden_dropout_prob,
        attention_dropout=hf_config.attention_probs_dropout_prob, hidden_act=hf_config.hidden_act,
        layer_norm_eps=hf_config.layer_norm_eps, initializer_range=hf_config.initializer_range,
        pad_token_id=hf_config.pad_token_id if hf_config.pad_token_id is not None else 0,
    )
    if arch == "albert":
        cfg.embedding_size = hf_config.embedding_size
        cfg.num_hidden_groups = hf_config.num_hidden_groups
        cfg.inner_group_num = hf_config.inner_group_num
    return cfg


def _layer_map(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(our prefix, HF prefix) for each distinct encoder layer, plus per-layer parameter names."""
    if cfg.arch == "bert":
        return [(f"encoder.layers.{i}.", f"bert.encoder.layer.{i}.") for i in range(cfg.num_layers)]
    inner = cfg.inner_group_num
    return [
        (f"encoder.layers.{g * inner + j}.", f"albert.encoder.albert_layer_groups.{g}.albert_layers.{j}.")
        for g in range(cfg.num_hidden_groups) for j in range(inner)
    ]


def _key_map(cfg: ModelConfig) -> tuple[dict[str, str], dict[str, tuple[str, str, str]]]:
    """Our key -> HF key for renamed tensors, and our qkv key -> HF (q, k, v) keys."""
    bert = cfg.arch == "bert"
    top = "bert." if bert else "albert."
    names: dict[str, str] = {}
    for t in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        names[f"embeddings.{t}.weight"] = f"{top}embeddings.{t}.weight"
    per_layer = (
        {"attention.out": "attention.output.dense", "attention.norm": "attention.output.LayerNorm",
         "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ffn_norm": "output.LayerNorm"}
        if bert else
        {"attention.out": "attention.dense", "attention.norm": "attention.LayerNorm",
         "ffn_in": "ffn", "ffn_out": "ffn_output", "ffn_norm": "full_layer_layer_norm"}
    )
    heads = (
        {"embeddings.norm": "bert.embeddings.LayerNorm", "heads.mlm.dense": "cls.predictions.transform.dense",
         "heads.mlm.norm": "cls.predictions.transform.LayerNorm", "heads.sentence.pooler": "bert.pooler.dense",
         "heads.sentence.classifier": "cls.seq_relationship"}
        if bert else
        {"embeddings.norm": "albert.embeddings.LayerNorm", "embeddings.projection": "albert.encoder.embedding_hidden_mapping_in",
         "heads.mlm.dense": "predictions.dense", "heads.mlm.norm": "predictions.LayerNorm",
         "heads.sentence.pooler": "albert.pooler", "heads.sentence.classifier": "sop_classifier.classifier"}
    )
    if cfg.sentence_head == "none":
        heads = {k: v for k, v in heads.items() if not k.startswith("heads.sentence")}
    for ours, theirs in heads.items():
        for p in ("weight", "bias"):
            names[f"{ours}.{p}"] = f"{theirs}.{p}"
    names["heads.mlm.bias"] = "cls.predictions.bias" if bert else "predictions.bias"
    qkv: dict[str, tuple[str, str, str]] = {}
    attn = "attention.self." if bert else "attention."
    for ours_prefix, hf_prefix in _layer_map(cfg):
        for ours, theirs in per_layer.items():
            for p in ("weight", "bias"):
                names[f"{ours_prefix}{ours}.{p}"] = f"{hf_prefix}{theirs}.{p}"
        for p in ("weight", "bias"):
            qkv[f"{ours_prefix}attention.qkv.{p}"] = tuple(f"{hf_prefix}{attn}{n}.{p}" for n in QKV)
    return names, qkv


def to_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our model's weights under HF names (tied decoder weight/bias included explicitly)."""
    cfg = model.cfg
    sd = model.state_dict()
    names, qkv = _key_map(cfg)
    out = {theirs: sd[ours] for ours, theirs in names.items()}
    for ours, theirs in qkv.items():
        for name, part in zip(theirs, sd[ours].chunk(3, dim=0)):
            out[name] = part.clone()
    pred = "cls.predictions." if cfg.arch == "bert" else "predictions."
    out[pred + "decoder.weight"] = sd["embeddings.word_embeddings.weight"]
    out[pred + "decoder.bias"] = sd["heads.mlm.bias"]
    return out


def load_hf_state_dict(model: nn.Module, hf_sd: dict[str, torch.Tensor]) -> None:
    """Copy HF-named weights (from BertForPreTraining / AlbertForPreTraining) into our model.
    Missing keys raise, except the sentence head when the HF dict has none (a masked-LM-only
    checkpoint): then ours keeps its fresh initialisation."""
    cfg = model.cfg
    names, qkv = _key_map(cfg)
    ours_sd: dict[str, torch.Tensor] = {}
    for ours, theirs in names.items():
        if theirs in hf_sd:
            ours_sd[ours] = hf_sd[theirs]
        elif not ours.startswith("heads.sentence"):
            raise KeyError(f"HF state dict has no {theirs!r} (needed for {ours!r})")
    for ours, theirs in qkv.items():
        ours_sd[ours] = torch.cat([hf_sd[t] for t in theirs], dim=0)
    ours_sd["heads.mlm.decoder_weight"] = ours_sd["embeddings.word_embeddings.weight"]
    missing, unexpected = model.load_state_dict(ours_sd, strict=False)
    missing = [k for k in missing if not k.startswith("heads.sentence")]
    if missing or unexpected:
        raise KeyError(f"weight conversion mismatch: missing={missing} unexpected={unexpected}")
