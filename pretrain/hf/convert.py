"""Conversion between our models and transformers', dispatched to each architecture's own
converter module (the registry's `hf_module`: pretrain/hf/bert.py, pretrain/hf/modernbert.py).

A converter module provides: export_class(cfg), import_class(model_type), allowed_missing(key,
cfg) (export), import_may_lack(key) (import), to_hf_config(cfg, special_ids), from_hf_config(hf_config), to_hf_state_dict(model),
load_hf_state_dict(model, hf_sd).
"""
from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import nn

from pretrain.model import registry
from pretrain.model.config import ModelConfig

from .errors import ExportError

__all__ = ["ExportError", "converter", "converter_for", "from_hf_config", "load_hf_state_dict", "to_hf_config",
           "to_hf_state_dict"]


def converter(arch: str) -> ModuleType:
    return importlib.import_module(registry.get(arch).hf_module)


def converter_for(model_type: str) -> ModuleType:
    """The converter of transformers' `model_type`; one ExportError naming the supported ones."""
    try:
        arch = registry.for_hf_model_type(model_type)
    except ValueError:
        raise ExportError(f"config.json model_type={model_type!r}: only {list(registry.hf_model_types())} "
                          "checkpoints can be imported") from None
    return importlib.import_module(arch.hf_module)


def to_hf_config(cfg: ModelConfig, special_ids: dict | None = None):
    """ModelConfig -> the transformers config with the same shapes and numerics."""
    return converter(cfg.arch).to_hf_config(cfg, special_ids)


def from_hf_config(hf_config) -> ModelConfig:
    """transformers config -> ModelConfig (architecture from model_type)."""
    return converter_for(hf_config.model_type).from_hf_config(hf_config)


def to_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our model's weights under transformers' names."""
    return converter(model.cfg.arch).to_hf_state_dict(model)


def load_hf_state_dict(model: nn.Module, hf_sd: dict[str, torch.Tensor]) -> None:
    """Copy transformers-named weights into our model."""
    converter(model.cfg.arch).load_hf_state_dict(model, hf_sd)
