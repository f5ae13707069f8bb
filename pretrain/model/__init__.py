"""Plain-PyTorch BERT/ALBERT for pretraining (no distributed imports; `parallel/` wraps it)."""
from .config import ModelConfig
from .flops import flops_per_sequence, flops_per_step
from .heads import PretrainingOutput
from .pretraining import PretrainingModel, build_model

__all__ = ["ModelConfig", "PretrainingModel", "PretrainingOutput", "build_model", "flops_per_sequence", "flops_per_step"]
