"""Load stored task weights: into a model being trained (end of a run), or as a new task model
from a run's task/ directory and its backbone (what a user does to predict later)."""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import OmegaConf

from pretrain.train.checkpoint_manager import ResumeError

from .checkpoint import read_task
from .config import METHODS
from .data import LabelMap
from .methods import load_task_state
from .model import build_task_model, load_tokenizer, weights_fingerprint


def load_into(model, mcfg, task_dir: str) -> dict:
    meta, tensors = read_task(task_dir)
    load_task_state(model, mcfg, tensors)
    return meta


@dataclass
class LoadedTask:
    model: object
    tokenizer: object
    labels: LabelMap
    meta: dict


def load_task_model(task_dir: str, backbone: str | None = None) -> LoadedTask:
    """Backbone (the one recorded in task.json unless given) + method + task weights, in eval mode."""
    meta, tensors = read_task(task_dir)
    backbone = backbone or meta["backbone"]["path"]
    if weights_fingerprint(backbone) != meta["backbone"]["fingerprint"]:
        raise ResumeError(f"{task_dir}: these task weights were trained on another backbone than {backbone}")
    method = meta["method"]
    mcfg = OmegaConf.merge(OmegaConf.structured(METHODS[method["name"]]), method)
    labels = LabelMap.from_json(meta["labels"])
    built = build_task_model(backbone, meta["task"]["type"], labels, mcfg, OmegaConf.create(meta["model_config"]),
                             meta["max_seq_len"], meta["seed"])
    load_task_state(built.model, mcfg, tensors)
    return LoadedTask(built.model.eval(), load_tokenizer(backbone), labels, meta)
