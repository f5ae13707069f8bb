"""Plain-PyTorch encoders for pretraining (no distributed imports; `parallel/` wraps them).

Architectures come from one registry (pretrain/model/registry.py): BERT, ALBERT, ModernBERT."""
from . import registry
from .config import ModelConfig
from .flops import batch_flops, flops_per_sequence, flops_per_step
from .heads import PretrainingOutput
from .pretraining import PretrainingModel, build_model

__all__ = ["ModelConfig", "PretrainingModel", "PretrainingOutput", "apply_runtime_settings", "batch_flops",
           "build_model", "flops_per_sequence", "flops_per_step", "registry"]


def apply_runtime_settings(root, cfg: ModelConfig) -> int:
    """Give every layer under `root` (a model, or an engine's wrapped module) the settings of
    `cfg` that need no new weights (ModernBERT: rotary thetas, local window); returns how many
    layers took them."""
    layers = [m for m in root.modules() if hasattr(m, "apply_runtime_settings")]
    for m in layers:
        m.apply_runtime_settings(cfg)
    return len(layers)
