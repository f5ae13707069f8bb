"""LoRA (Hu et al. 2021) through peft: `inject_adapter_in_model` adds lora_A/lora_B to the target
projections in place, so the model stays a plain transformers model (same forward, same names
plus `.lora_A.default.weight` ...)."""
from __future__ import annotations


def apply(model, mcfg, spec, head_names) -> list[str]:
    """Targets: `method.target_modules`, or (null) the architecture's attention projections
    (BERT/ALBERT: query, value; ModernBERT: its fused Wqkv)."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(mcfg.target_modules) if mcfg.target_modules else list(spec.lora_targets)
    config = LoraConfig(r=mcfg.r, lora_alpha=mcfg.alpha, lora_dropout=mcfg.dropout, target_modules=targets, bias="none")
    try:
        inject_adapter_in_model(config, model)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"method=lora: {str(e).splitlines()[0]}") from None
    return [".lora_A.", ".lora_B."]
