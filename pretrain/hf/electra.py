"""ELECTRA runs (objective=electra) <-> transformers: the discriminator as `ElectraForPreTraining`,
the generator as `ElectraForMaskedLM` (BERT-shaped models only: transformers' ELECTRA is a BERT
encoder; the names below are BERT's under `electra.`), and the fine-tuning facts of an `electra`
checkpoint (pretrain-finetune reads ELECTRA directories, ours or Google's).

Our generator shares the discriminator's embedding module and projects it to its width: that is
transformers' ElectraForMaskedLM with embedding_size = the discriminator's hidden size and an
`embeddings_project`; its head is dense -> gelu -> LayerNorm -> decoder tied to the table.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from pretrain.model.config import ModelConfig

from . import bert
from .errors import ExportError


def finetune_spec(model_type: str = "electra"):
    from .finetune_spec import FinetuneSpec

    return FinetuneSpec(
        layer_classes=("ElectraLayer",), attention_classes=("ElectraSelfAttention",),
        output_projections=(("ElectraSelfOutput", "dense"), ("ElectraOutput", "dense")),
        lora_targets=("query", "value"), side_input="embeddings", side_output="encoder",
        hidden_dropout_keys=("hidden_dropout_prob",), attention_dropout_keys=("attention_probs_dropout_prob",))


def check_exportable(cfg: ModelConfig, generator_cfg: ModelConfig) -> None:
    """One ExportError for what transformers' ELECTRA cannot hold."""
    if cfg.arch != "bert":
        raise ExportError(f"ELECTRA export to transformers needs model.arch=bert (got {cfg.arch!r})")
    if generator_cfg.hidden_size == cfg.hidden_size:
        raise ExportError("ELECTRA export needs a generator narrower than the model (transformers' ElectraForMaskedLM "
                          "has no embedding projection when embedding_size == hidden_size)")
    if cfg.hidden_act != "gelu":
        raise ExportError(f"ELECTRA export needs model.hidden_act=gelu (transformers' generator head uses gelu; "
                          f"got {cfg.hidden_act!r})")


def electra_config(cfg: ModelConfig, embedding_size: int, architecture: str):
    from transformers import ElectraConfig

    return ElectraConfig(
        vocab_size=cfg.vocab_size, embedding_size=embedding_size, hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act, hidden_dropout_prob=cfg.hidden_dropout, attention_probs_dropout_prob=cfg.attention_dropout,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        initializer_range=cfg.initializer_range, layer_norm_eps=cfg.layer_norm_eps, pad_token_id=cfg.pad_token_id,
        architectures=[architecture], tokenizer_class="BertTokenizerFast")


def _encoder_state(state: dict, cfg: ModelConfig, prefix: str = "") -> dict:
    """BERT encoder layers of `state` (our names under `prefix`) under transformers' ELECTRA names."""
    names, qkv = bert._key_map(cfg)
    out = {}
    for ours, theirs in names.items():
        if ours.startswith("encoder.layers."):
            out[theirs.replace("bert.", "electra.", 1)] = state[prefix + ours]
    for ours, theirs in qkv.items():
        for name, part in zip(theirs, state[prefix + ours].chunk(3, dim=0)):
            out[name.replace("bert.", "electra.", 1)] = part.clone()
    return out


def discriminator_state(model: nn.Module) -> dict:
    sd = model.state_dict()
    out = {f"electra.embeddings.{t}.weight": sd[f"embeddings.{t}.weight"]
           for t in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
    out.update({f"electra.embeddings.LayerNorm.{p}": sd[f"embeddings.norm.{p}"] for p in ("weight", "bias")})
    out.update(_encoder_state(sd, model.cfg))
    for ours, theirs in (("dense", "dense"), ("dense_prediction", "dense_prediction")):
        for p in ("weight", "bias"):
            out[f"discriminator_predictions.{theirs}.{p}"] = sd[f"objective_modules.discriminator.{ours}.{p}"]
    return out


def generator_state(model: nn.Module) -> dict:
    sd = model.state_dict()
    generator = model.objective_modules["generator"]
    out = {k: v for k, v in discriminator_state(model).items() if k.startswith("electra.embeddings.")}
    g = "objective_modules.generator."
    out.update({f"electra.embeddings_project.{p}": sd[f"{g}embeddings.project.{p}"] for p in ("weight", "bias")})
    out.update(_encoder_state(sd, generator.cfg, prefix=g))
    for ours, theirs in (("dense", "dense"), ("norm", "LayerNorm")):
        for p in ("weight", "bias"):
            out[f"generator_predictions.{theirs}.{p}"] = sd[f"{g}heads.mlm.{ours}.{p}"]
    out["generator_lm_head.weight"] = sd["embeddings.word_embeddings.weight"]
    out["generator_lm_head.bias"] = sd[f"{g}heads.mlm.bias"]
    return out


def to_hf_models(model: nn.Module):
    """(ElectraForPreTraining, ElectraForMaskedLM) holding our discriminator's and generator's
    weights (eval mode, fp32)."""
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    cfg, gen_cfg = model.cfg, model.objective_modules["generator"].cfg
    check_exportable(cfg, gen_cfg)
    out = []
    for cls, config, state in (
            (ElectraForPreTraining, electra_config(cfg, cfg.hidden_size, "ElectraForPreTraining"), discriminator_state(model)),
            (ElectraForMaskedLM, electra_config(gen_cfg, cfg.hidden_size, "ElectraForMaskedLM"), generator_state(model))):
        hf = cls(config)
        missing, unexpected = hf.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
        if missing or unexpected:
            raise ExportError(f"ELECTRA conversion mismatch ({cls.__name__}): missing={missing[:3]} unexpected={unexpected[:3]}")
        out.append(hf.eval())
    return tuple(out)


def export_electra(model: nn.Module, tokenizer_file: str | Path, out_dir: str | Path) -> Path:
    """out_dir: the discriminator (ElectraForPreTraining, what to fine-tune) with the tokenizer;
    out_dir/generator: the generator (ElectraForMaskedLM) with the tokenizer."""
    from .export import save_tokenizer

    out_dir = Path(out_dir)
    discriminator, generator = to_hf_models(model)
    for hf, where in ((discriminator, out_dir), (generator, out_dir / "generator")):
        where.mkdir(parents=True, exist_ok=True)
        hf.save_pretrained(str(where), safe_serialization=True)
        save_tokenizer(tokenizer_file, where)
    return out_dir
