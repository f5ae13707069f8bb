"""Export to / import from a Hugging Face directory (safetensors + config.json + tokenizer).

The exported directory loads with no custom code:
`AutoModelForMaskedLM.from_pretrained(d)`, `AutoTokenizer.from_pretrained(d)`,
`pipeline("fill-mask", model=d)`; BERT/ALBERT exports are `BertForPreTraining`/`AlbertForPreTraining`
with both heads, ModernBERT exports `ModernBertForMaskedLM` (which has no sentence head).
Our tokenizer is WordPiece for every architecture, so every export uses BertTokenizerFast
(tokenizer_config.json names the class explicitly, otherwise AutoTokenizer would pick ALBERT's
SentencePiece tokenizer from model_type).
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
from torch import nn

from pretrain.model.config import ModelConfig
from pretrain.model.pretraining import PretrainingModel, build_model

from .convert import ExportError, converter, converter_for, from_hf_config, load_hf_state_dict, to_hf_state_dict

__all__ = ["ExportError", "RUN_OPTIONS", "continued_config", "export_hf", "hf_model_config",
           "load_hf_pretrained", "save_tokenizer", "shape_differences", "to_hf_model"]

# Continued pretraining (model.init_from): what the run decides about a pretrained model —
# regularisation, memory, which sentence head to train, where it came from. Every other
# ModelConfig field is the pretrained model's own (its shape and architecture) and comes from
# the HF directory's config.json.
RUN_OPTIONS = ("hidden_dropout", "attention_dropout", "sentence_head", "gradient_checkpointing", "init_from",
               "unpad", "attention_backend")

SPECIAL_TOKENS = dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")


def to_hf_model(model: nn.Module, cfg: ModelConfig, special_ids: dict | None = None):
    """The transformers model (eval mode, fp32) holding our weights: Bert/AlbertForPreTraining or
    ModernBertForMaskedLM (the registry's converter decides)."""
    conv = converter(cfg.arch)
    hf = conv.export_class(cfg)(conv.to_hf_config(cfg, special_ids))
    missing, unexpected = hf.load_state_dict({k: v.float() for k, v in to_hf_state_dict(model).items()}, strict=False)
    bad = [k for k in missing if not conv.allowed_missing(k, cfg)]
    if bad or unexpected:
        raise KeyError(f"HF conversion mismatch: missing={bad} unexpected={unexpected}")
    return hf.eval()


def _lowercases(tokenizer) -> bool:
    """Whether the tokenizers.Tokenizer lowercases (BertNormalizer(lowercase) or a Lowercase step)."""
    normalizer = json.loads(tokenizer.to_str()).get("normalizer") or {}
    steps = normalizer.get("normalizers", [normalizer])
    return any(s.get("type") == "Lowercase" or (s.get("type") == "BertNormalizer" and s.get("lowercase")) for s in steps)


def save_tokenizer(tokenizer_file: str | Path, out_dir: str | Path):
    """Wrap our tokenizer.json in BertTokenizerFast and save it (tokenizer.json, tokenizer_config.json,
    special_tokens_map.json, vocab.txt where supported)."""
    from tokenizers import Tokenizer
    from transformers import BertTokenizerFast

    if not Path(tokenizer_file).is_file():
        raise ExportError(f"tokenizer file {str(tokenizer_file)!r} does not exist")
    raw = Tokenizer.from_file(str(tokenizer_file))
    missing = [t for t in SPECIAL_TOKENS.values() if raw.token_to_id(t) is None]
    if missing:
        raise ExportError(f"tokenizer {str(tokenizer_file)!r} lacks special tokens {missing}")
    tok = BertTokenizerFast(tokenizer_object=raw, do_lower_case=_lowercases(raw), **SPECIAL_TOKENS)
    tok.save_pretrained(str(out_dir))
    config_path = Path(out_dir) / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["tokenizer_class"] = "BertTokenizerFast"
    config_path.write_text(json.dumps(tok_config, indent=2))
    return tok


def export_hf(model: nn.Module, cfg: ModelConfig, tokenizer_file: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir` with model.safetensors (ties handled by save_pretrained), config.json
    (architectures from the converter) and tokenizer files. Returns out_dir."""
    from tokenizers import Tokenizer

    if Path(tokenizer_file).is_file() and Tokenizer.from_file(str(tokenizer_file)).get_vocab_size() > cfg.vocab_size:
        raise ExportError(f"tokenizer {str(tokenizer_file)!r} has more tokens than model.vocab_size={cfg.vocab_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    special = None
    if Path(tokenizer_file).is_file():
        raw = Tokenizer.from_file(str(tokenizer_file))
        special = {"cls": raw.token_to_id(SPECIAL_TOKENS["cls_token"]), "sep": raw.token_to_id(SPECIAL_TOKENS["sep_token"])}
    hf = to_hf_model(model, cfg, special)
    hf.config.tokenizer_class = "BertTokenizerFast"
    hf.save_pretrained(str(out_dir), safe_serialization=True)
    save_tokenizer(tokenizer_file, out_dir)
    return out_dir


def hf_model_config(path: str | Path) -> ModelConfig:
    """The ModelConfig of an HF directory of a registered architecture, from its config.json alone
    (no weights read)."""
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ExportError(f"model.init_from={str(path)!r}: no config.json there (expected an HF model directory)")
    return from_hf_config(AutoConfig.from_pretrained(str(path)))


def shape_differences(a: ModelConfig, b: ModelConfig) -> dict[str, tuple]:
    """{key: (a's, b's)} for every field that is not a RUN_OPTION and differs."""
    return {f.name: (getattr(a, f.name), getattr(b, f.name)) for f in fields(ModelConfig)
            if f.name not in RUN_OPTIONS and getattr(a, f.name) != getattr(b, f.name)}


def continued_config(run: ModelConfig, pretrained: ModelConfig) -> ModelConfig:
    """The model a continued-pretraining run trains: `pretrained`'s shape, `run`'s RUN_OPTIONS."""
    return replace(pretrained, **{k: getattr(run, k) for k in RUN_OPTIONS})


def load_hf_pretrained(path: str | Path, cfg: ModelConfig | None = None) -> tuple[PretrainingModel, ModelConfig]:
    """Our model + config from an HF directory of a registered architecture (ours, or any
    Bert/AlbertForPreTraining, *ForMaskedLM or ModernBertForMaskedLM checkpoint; a missing sentence
    head is freshly initialised). Used for continued pretraining (ModelConfig.init_from).

    With `cfg` (the run's effective model config, continued_config at launch) the model is built
    from it, so the run's dropout / gradient checkpointing / sentence head apply; a shape that
    differs from the directory's is one ExportError naming the key.
    """
    from transformers import AutoConfig

    loaded = hf_model_config(path)
    if cfg is not None:
        differ = shape_differences(cfg, loaded)
        if differ:
            key, (ours, theirs) = next(iter(differ.items()))
            raise ExportError(f"model.{key}={ours!r} but model.init_from={str(path)!r} has {key}={theirs!r}; "
                              "with init_from the model's shape is the directory's")
        loaded = ModelConfig(**asdict(cfg))
    model_type = AutoConfig.from_pretrained(str(path)).model_type
    conv = converter_for(model_type)
    hf, info = conv.import_class(model_type).from_pretrained(str(path), output_loading_info=True)
    check_import(path, conv, hf, info)
    model = build_model(loaded)
    load_hf_state_dict(model, hf.state_dict())
    return model, loaded


def check_import(path: str | Path, conv, hf, info: dict) -> None:
    """Refuse, in one line, a directory transformers would load into a different model without
    failing: a weight it would drop (unexpected), one it would initialise randomly (missing, other
    than what our import initialises anyway: the sentence head), or a decoder not tied to the
    token embeddings (ours always are: the file's decoder would be replaced by the embeddings)."""
    where = f"model.init_from={str(path)!r}"
    decoder, embeddings = hf.get_output_embeddings(), hf.get_input_embeddings()
    stored = _stored_tensor(Path(path), _param_name(hf, decoder) + ".weight")
    for what, weight in (("config.json tie_word_embeddings=false and the decoder", decoder.weight),
                         ("the stored decoder weight", stored)):
        if weight is not None and weight.shape == embeddings.weight.shape and \
                not torch.equal(weight.to(embeddings.weight.dtype), embeddings.weight):
            raise ExportError(f"{where}: {what} differs from the token embeddings (an untied decoder); "
                              "our models tie them, so importing would replace it")
    unexpected = [k for k in info.get("unexpected_keys", ()) if not k.endswith(("position_ids", "token_type_ids"))]
    if unexpected:
        raise ExportError(f"{where}: weight {unexpected[0]!r} (of {len(unexpected)} unexpected) has no place in "
                          f"{type(hf).__name__}; importing would drop it")
    missing = [k for k in info.get("missing_keys", ()) if not conv.import_may_lack(k)]
    if missing:
        raise ExportError(f"{where}: weight {missing[0]!r} (of {len(missing)} missing) is not in the directory; "
                          "importing would initialise it randomly")


def _param_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def _stored_tensor(path: Path, name: str):
    """The tensor `name` as stored in the directory's safetensors files, or None."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        file = json.loads(index.read_text()).get("weight_map", {}).get(name)
        files = [path / file] if file else []
    else:
        files = [path / "model.safetensors"]
    for file in files:
        if file.is_file():
            with safe_open(str(file), framework="pt") as f:
                if name in f.keys():
                    return f.get_tensor(name)
    return None
