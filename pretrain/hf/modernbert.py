"""ModernBERT <-> transformers' `ModernBertForMaskedLM` (config and weights, both directions).

Our module names are transformers' own below the top level (pretrain/model/modernbert.py), so
the weights convert by prefix: `embeddings.` <-> `model.embeddings.`, `encoder.layers.` <->
`model.layers.`, `heads.final_norm.` <-> `model.final_norm.`, `heads.mlm.{dense,norm}.` <->
`head.{dense,norm}.`, `heads.mlm.bias` <-> `decoder.bias`, and the decoder weight is the token
embedding in both. Our SOP/NSP head has no transformers counterpart: an export leaves it out,
an import initialises it fresh.
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain.model.config import ModelConfig
from pretrain.model.modernbert import is_global

from .errors import ExportError

_PREFIXES = (  # ours -> transformers'
    ("embeddings.", "model.embeddings."),
    ("encoder.layers.", "model.layers."),
    ("heads.final_norm.", "model.final_norm."),
    ("heads.mlm.dense.", "head.dense."),
    ("heads.mlm.norm.", "head.norm."),
)


def export_class(cfg: ModelConfig):
    from transformers import ModernBertForMaskedLM

    return ModernBertForMaskedLM


def import_class(model_type: str):
    from transformers import ModernBertForMaskedLM

    return ModernBertForMaskedLM


def finetune_spec(model_type: str):
    """ModernBertFor{Sequence,Token}Classification: pre-LN layers (attention Wqkv/Wo, GeGLU Wi/Wo),
    no `encoder` module: the side network blends at the final norm's output."""
    from .finetune_spec import FinetuneSpec

    return FinetuneSpec(
        layer_classes=("ModernBertEncoderLayer",), attention_classes=("ModernBertAttention",),
        output_projections=(("ModernBertAttention", "Wo"), ("ModernBertMLP", "Wo")),
        lora_targets=("Wqkv",), side_input="embeddings", side_output="final_norm",
        hidden_dropout_keys=("embedding_dropout", "mlp_dropout", "classifier_dropout"),
        attention_dropout_keys=("attention_dropout",))


def import_may_lack(key: str) -> bool:
    """ModernBertForMaskedLM has no sentence head: an import needs every weight it has."""
    return False


def allowed_missing(key: str, cfg: ModelConfig) -> bool:
    return False


def _layer_types(cfg: ModelConfig) -> list[str]:
    return ["full_attention" if is_global(cfg, i) else "sliding_attention" for i in range(cfg.num_layers)]


def to_hf_config(cfg: ModelConfig, special_ids: dict | None = None):
    """ModelConfig -> transformers ModernBertConfig with the same shapes and numerics.
    special_ids: {"cls": id, "sep": id} of the tokenizer (written as cls/bos and sep/eos)."""
    from transformers import ModernBertConfig

    special = special_ids or {}
    config = ModernBertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, hidden_activation=cfg.hidden_act,
        max_position_embeddings=cfg.max_position_embeddings, initializer_range=cfg.initializer_range,
        initializer_cutoff_factor=cfg.initializer_cutoff_factor, norm_eps=cfg.layer_norm_eps, norm_bias=cfg.norm_bias,
        pad_token_id=cfg.pad_token_id, cls_token_id=special.get("cls"), bos_token_id=special.get("cls"),
        sep_token_id=special.get("sep"), eos_token_id=special.get("sep"),
        attention_bias=cfg.linear_bias, mlp_bias=cfg.linear_bias, classifier_bias=cfg.linear_bias,
        attention_dropout=cfg.attention_dropout, embedding_dropout=cfg.hidden_dropout, mlp_dropout=cfg.hidden_dropout,
        layer_types=_layer_types(cfg), local_attention=cfg.local_attention or cfg.max_position_embeddings,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": cfg.global_rope_theta},
                         "sliding_attention": {"rope_type": "default", "rope_theta": cfg.local_rope_theta}},
        decoder_bias=True, classifier_activation=cfg.hidden_act, tie_word_embeddings=True,
        architectures=["ModernBertForMaskedLM"],
    )
    # transformers 4.48-4.57 read these keys instead of layer_types / rope_parameters: the same
    # values, so a reader of either generation builds the same model (5.x is the one tested).
    config.global_attn_every_n_layers = cfg.global_attn_every_n_layers if cfg.local_attention else 1
    config.global_rope_theta, config.local_rope_theta = cfg.global_rope_theta, cfg.local_rope_theta
    return config


def _global_every(layer_types: list[str]) -> int:
    """n such that layer i is global exactly when i % n == 0; ExportError for another pattern."""
    n = next((i for i, t in enumerate(layer_types) if i > 0 and t == "full_attention"), len(layer_types))
    expected = ["full_attention" if i % n == 0 else "sliding_attention" for i in range(len(layer_types))]
    if layer_types != expected:
        raise ExportError(f"config.json layer_types={layer_types}: only a global layer every n layers "
                          "(starting with layer 0) can be imported")
    return n


def from_hf_config(hf_config) -> ModelConfig:
    """transformers ModernBertConfig -> ModelConfig; a variant we cannot compute is one ExportError."""
    c = hf_config
    if not (c.attention_bias == c.mlp_bias == c.classifier_bias):
        raise ExportError(f"config.json attention_bias={c.attention_bias}, mlp_bias={c.mlp_bias}, "
                          f"classifier_bias={c.classifier_bias}: only all-equal linear biases can be imported")
    if c.classifier_activation != c.hidden_activation:
        raise ExportError(f"config.json classifier_activation={c.classifier_activation!r} differs from "
                          f"hidden_activation={c.hidden_activation!r}: not supported")
    if not c.decoder_bias:
        raise ExportError("config.json decoder_bias=false: not supported (our MLM decoder has a bias)")
    if c.embedding_dropout != c.mlp_dropout:
        raise ExportError(f"config.json embedding_dropout={c.embedding_dropout} differs from "
                          f"mlp_dropout={c.mlp_dropout}: not supported (both are model.hidden_dropout)")
    rope = c.rope_parameters or {}
    for kind in ("full_attention", "sliding_attention"):
        rope_type = (rope.get(kind) or {}).get("rope_type", "default")
        if rope_type != "default":
            raise ExportError(f"config.json rope_parameters.{kind}.rope_type={rope_type!r}: only 'default' rotary "
                              "embeddings can be imported")
    layer_types = list(c.layer_types)
    local = "sliding_attention" in layer_types
    return ModelConfig(
        arch="modernbert", vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings, hidden_dropout=float(c.mlp_dropout),
        attention_dropout=float(c.attention_dropout), hidden_act=c.hidden_activation, layer_norm_eps=c.norm_eps,
        initializer_range=c.initializer_range, initializer_cutoff_factor=c.initializer_cutoff_factor or 2.0,
        pad_token_id=c.pad_token_id if c.pad_token_id is not None else 0,
        global_attn_every_n_layers=_global_every(layer_types) if local else 1,
        local_attention=int(c.local_attention) if local else 0,
        global_rope_theta=float((rope.get("full_attention") or {}).get("rope_theta", 160000.0)),
        local_rope_theta=float((rope.get("sliding_attention") or {}).get("rope_theta", 10000.0)),
        linear_bias=bool(c.attention_bias), norm_bias=bool(c.norm_bias), sentence_head="none",
    )


def to_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names (tied decoder weight included explicitly)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("heads.sentence.") or key == "heads.mlm.decoder_weight":
            continue
        if key == "heads.mlm.bias":
            out["decoder.bias"] = value
            continue
        for ours, theirs in _PREFIXES:
            if key.startswith(ours):
                out[theirs + key[len(ours):]] = value
                break
        else:
            raise KeyError(f"no transformers name for {key!r}")
    out["decoder.weight"] = out["model.embeddings.tok_embeddings.weight"]
    return out


def load_hf_state_dict(model: nn.Module, hf_sd: dict[str, torch.Tensor]) -> None:
    """Copy transformers-named weights (ModernBertForMaskedLM or ModernBertModel's) into our
    model; the sentence head keeps its fresh initialisation."""
    ours_sd = {}
    for key, value in hf_sd.items():
        if key == "decoder.bias":
            ours_sd["heads.mlm.bias"] = value
            continue
        for ours, theirs in _PREFIXES:
            if key.startswith(theirs):
                ours_sd[ours + key[len(theirs):]] = value
                break
    if "heads.mlm.bias" not in ours_sd:
        ours_sd["heads.mlm.bias"] = torch.zeros(model.cfg.vocab_size)
    ours_sd["heads.mlm.decoder_weight"] = ours_sd.get("embeddings.tok_embeddings.weight")
    missing, unexpected = model.load_state_dict(ours_sd, strict=False)
    missing = [k for k in missing if not k.startswith("heads.sentence")]
    if missing or unexpected:
        raise KeyError(f"weight conversion mismatch: missing={missing} unexpected={unexpected}")
