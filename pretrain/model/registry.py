"""The registry of encoder architectures: the one place that knows which exist.

Adding an architecture = one model module that defines `ARCHITECTURES` (its `Architecture`
entries), its HF conversion module, presets in conf/model/, and one line in `_MODULES` below.
Everything else (config checks, export, init_from, fine-tuning, pipeline partitioning, FLOPs)
asks this registry instead of branching on `cfg.arch`.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from .config import ModelConfig

# The modules that register architectures (each defines ARCHITECTURES: tuple[Architecture, ...]).
_MODULES = ("pretrain.model.bert", "pretrain.model.modernbert")


@dataclass(frozen=True)
class Parts:
    """What an architecture builds; `PretrainingModel` assembles it with the shared heads."""
    embeddings: nn.Module              # has .word_embeddings (the table the MLM decoder is tied to)
    encoder: nn.Module                 # pretrain.model.encoder.Encoder
    final_norm: Optional[nn.Module]    # applied before the heads (pre-LN models), or None
    sentence_dropout: float = 0.0      # dropout before the SOP/NSP classifier


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[ModelConfig], Parts]
    init_weights: Callable[[nn.Module, ModelConfig], None]
    validate: Callable[[ModelConfig], None]          # one-line ValueError naming the key
    layer_applications: Callable[[ModelConfig], int]  # encoder layers run per forward
    # forward matmul FLOPs of the encoder (embeddings + layers, no heads) for examples of these lengths
    encoder_flops: Callable[[ModelConfig, "object"], float]
    hf_module: str                                    # its transformers conversion (pretrain.hf.*)
    hf_model_types: tuple[str, ...]                   # transformers model_type(s) it converts from
    description: str = ""


@functools.lru_cache(maxsize=None)
def architectures() -> dict[str, Architecture]:
    out: dict[str, Architecture] = {}
    for module in _MODULES:
        for arch in importlib.import_module(module).ARCHITECTURES:
            if arch.name in out:
                raise RuntimeError(f"architecture {arch.name!r} registered twice ({module})")
            out[arch.name] = arch
    return out


def names() -> tuple[str, ...]:
    return tuple(architectures())


def get(name: str) -> Architecture:
    """The architecture called `name`; a one-line error listing the registered ones otherwise."""
    try:
        return architectures()[name]
    except KeyError:
        raise ValueError(f"model.arch={name!r}: expected one of {list(names())}") from None


def hf_model_types() -> tuple[str, ...]:
    return tuple(t for a in architectures().values() for t in a.hf_model_types)


def for_hf_model_type(model_type: str) -> Architecture:
    """The architecture that converts transformers' `model_type` (first registered wins)."""
    for arch in architectures().values():
        if model_type in arch.hf_model_types:
            return arch
    raise ValueError(f"model_type={model_type!r}: only {list(hf_model_types())} checkpoints can be imported")
