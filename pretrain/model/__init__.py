"""Plain-PyTorch encoders for pretraining (no distributed imports; `parallel/` wraps them).

Architectures come from one registry (pretrain/model/registry.py): BERT, ALBERT, ModernBERT."""
from . import registry
from .config import ModelConfig
from .flops import batch_flops, flops_per_sequence, flops_per_step
from .heads import PretrainingOutput
from .pretraining import PretrainingModel, build_model

__all__ = ["ModelConfig", "PretrainingModel", "PretrainingOutput", "batch_flops", "build_model", "flops_per_sequence",
           "flops_per_step", "registry"]
