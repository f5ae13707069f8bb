"""The backbone (where `model.path` points) and the task model built on it.

`model.path` may be a pretrain-launch run directory (its newest complete checkpoint is exported
once, through pretrain.train.export.export_run, into <fine-tuning run>/backbone/ and that copy is
used for the whole run, resumes included), a directory exported by pretrain-export, or any local
Hugging Face directory of a registered architecture (BERT, ALBERT, ModernBERT: BertForMaskedLM,
BertForPreTraining, ModernBertForMaskedLM, ...; it needs tokenizer files). The task model is transformers' *ForSequenceClassification / *ForTokenClassification;
weights the checkpoint lacks (the classifier, a missing pooler) form the task head.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from pretrain.train.config import ConfigError

from .backbones import spec_for
from .data import LabelMap
from .methods import ParamCount, apply_method

BACKBONE_DIR = "backbone"
SOURCE_FILE = "source.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "checkpoints").is_dir()


def resolve_backbone(model_path: str, run_dir: str, log=print) -> str:
    """The HF directory to load: `model_path` itself, or (for a run dir) its export in run_dir/backbone."""
    source = Path(model_path).expanduser()
    if not source.exists():
        raise ConfigError(f"config key 'model.path' = {model_path!r}: no such directory")
    if is_run_dir(source):
        return _exported_run(source, Path(run_dir) / BACKBONE_DIR, log)
    if (source / "config.json").is_file():
        return str(source.resolve())
    raise ConfigError(
        f"config key 'model.path' = {model_path!r}: neither a pretrain-launch run directory (config.yaml + "
        "checkpoints/) nor a Hugging Face model directory (config.json)"
    )


def _exported_run(run: Path, out: Path, log) -> str:
    marker = out / SOURCE_FILE
    if marker.is_file():  # exported when this fine-tuning run started: keep using that one
        info = json.loads(marker.read_text())
        if info.get("run") != str(run.resolve()):
            raise ConfigError(f"{out} was exported from {info.get('run')}, not {run.resolve()}; use run.fresh=true to start over")
        return str(out.resolve())
    from pretrain.train.checkpoint_manager import CheckpointManager, ResumeError
    from pretrain.train.export import export_run

    candidates = CheckpointManager(str(run), log=log).complete()
    if not candidates:
        raise ResumeError(f"{run}/checkpoints: no complete checkpoint to fine-tune from")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export_run(str(run), str(tmp), checkpoint=candidates[0], log=log)
    (tmp / SOURCE_FILE).write_text(json.dumps({"run": str(run.resolve()), "checkpoint": candidates[0]}, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return str(out.resolve())


def weights_fingerprint(hf_dir: str) -> str:
    """sha256 (first 16 hex) of the backbone's weight file: task weights only fit this backbone."""
    for name in WEIGHT_FILES:
        path = Path(hf_dir) / name
        if path.is_file():
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
            return h.hexdigest()[:16]
    raise ConfigError(f"{hf_dir}: no model weights ({' or '.join(WEIGHT_FILES)})")


def load_tokenizer(hf_dir: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(hf_dir)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{hf_dir}: cannot load a tokenizer ({str(e).splitlines()[0]})") from None
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"{hf_dir}: the tokenizer is not a fast (Rust) tokenizer; word alignment needs one")
    return tok


@dataclass
class TaskModel:
    model: torch.nn.Module
    head: set[str]            # names of the newly initialised parameters
    params: ParamCount
    arch: str
    token_types: bool = True  # the model's forward takes token_type_ids (ModernBERT's does not)


def build_task_model(hf_dir: str, task_type: str, labels: LabelMap, mcfg, model_cfg, max_seq_len: int,
                     seed: int) -> TaskModel:
    """transformers task model from the backbone, with `mcfg`'s method applied (head init from `seed`)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(hf_dir)
    spec = spec_for(config.model_type, hf_dir)
    if max_seq_len > config.max_position_embeddings:
        raise ConfigError(f"config: trainer.max_seq_len={max_seq_len} exceeds the backbone's max_position_embeddings="
                          f"{config.max_position_embeddings}")
    config.num_labels = labels.num_labels
    if not labels.regression:
        config.id2label = dict(enumerate(labels.names))
        config.label2id = {n: i for i, n in enumerate(labels.names)}
    config.problem_type = "regression" if labels.regression else "single_label_classification"
    for keys, value in ((spec.hidden_dropout_keys, model_cfg.hidden_dropout),
                        (spec.attention_dropout_keys, model_cfg.attention_dropout)):
        if value is not None:
            for key in keys:
                setattr(config, key, value)
    cls = AutoModelForTokenClassification if task_type == "token_classification" else AutoModelForSequenceClassification
    torch.manual_seed(seed)  # the head's initialisation
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized" warning is expected: we report the head ourselves
    try:
        model, info = cls.from_pretrained(hf_dir, config=config, output_loading_info=True, attn_implementation="sdpa")
    finally:
        hf_logging.set_verbosity(verbosity)
    head = set(info.get("missing_keys", ())) | {k for k, *_ in info.get("mismatched_keys", ())}
    names = {n for n, _ in model.named_parameters()}
    head &= names
    if not head:
        raise ConfigError(f"{hf_dir}: already has a {cls.__name__} head; give a pretrained (masked-LM) backbone")
    model.float()
    token_types = "token_type_ids" in inspect.signature(model.forward).parameters
    torch.manual_seed(seed + 1)  # the method's own initialisation
    params = apply_method(model, mcfg, head, spec)
    return TaskModel(model, head, params, config.model_type, token_types)
