"""What fine-tuning needs to know about an architecture's transformers task models, declared by
each converter module (`finetune_spec(model_type)` in pretrain/hf/<arch>.py), so the task-model
builder and the methods (pretrain/finetune/) carry no per-architecture branches. Module classes
are named by their transformers class name (no imports of every architecture's modeling file)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FinetuneSpec:
    layer_classes: tuple[str, ...]                    # encoder layers (mask tuning masks their linears)
    attention_classes: tuple[str, ...]                # self-attention modules that call transformers' attention interface (prefix)
    output_projections: tuple[tuple[str, str], ...]   # (module class, attribute): sublayer output projections (adapters)
    lora_targets: tuple[str, ...]                     # LoRA's default target modules: the attention projections
    side_input: str                                   # base-model submodule whose output the side network reads
    side_output: str                                  # base-model submodule whose output is blended with the side network's
    hidden_dropout_keys: tuple[str, ...]              # config keys model.hidden_dropout sets
    attention_dropout_keys: tuple[str, ...]           # config keys model.attention_dropout sets
