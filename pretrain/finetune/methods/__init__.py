"""Fine-tuning methods: each one changes a transformers task model in place and says which
parameters it trains; everything else is frozen. The task head (weights the backbone checkpoint
did not provide: the classifier, and the pooler where the checkpoint had none) is trained by
every method.

| method  | trains (besides the head)                        | module        |
|---------|--------------------------------------------------|---------------|
| full    | every parameter                                  | (here)        |
| adapter | Houlsby bottleneck adapters (+ LayerNorms)       | adapter.py    |
| prefix  | key/value prefixes of every self-attention       | prefix.py     |
| lora    | LoRA A/B of the target projections (peft)        | lora.py       |
| bitfit  | every bias                                       | bitfit.py     |
| side    | a side network and its blend weight              | side.py       |
| mask    | real-valued scores of binary weight masks        | mask.py       |

Task weights (what is stored per task) are the trained tensors; mask tuning stores its masks as bits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pretrain.train.config import ConfigError

from . import adapter, bitfit, lora, mask, prefix, side

_APPLY = {"adapter": adapter.apply, "prefix": prefix.apply, "lora": lora.apply, "bitfit": bitfit.apply,
          "side": side.apply, "mask": mask.apply}


@dataclass(frozen=True)
class ParamCount:
    trainable: int      # parameters the optimizer updates (shared tensors counted once)
    base: int           # parameters of the unmodified task model (backbone + head)
    total: int          # parameters after the method added its own

    @property
    def fraction(self) -> float:
        """Trainable parameters as a fraction of the unmodified task model (1.0 for full)."""
        return self.trainable / self.base


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def apply_method(model: nn.Module, mcfg, head_names: set[str], spec) -> ParamCount:
    """Apply `mcfg.name` to `model` in place (`spec`: the architecture's FinetuneSpec, for where
    the method goes); afterwards exactly its parameters (and the head) have requires_grad.
    Returns the parameter counts."""
    base = count(model)
    if mcfg.name == "full":
        markers = None
    else:
        try:
            markers = _APPLY[mcfg.name](model, mcfg, spec, head_names)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    for name, p in model.named_parameters():
        p.requires_grad_(markers is None or name in head_names or any(m in name or name == m for m in markers))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ParamCount(trainable, base, count(model))


def task_state(model: nn.Module, mcfg) -> dict[str, torch.Tensor]:
    """The tensors that make this task's model, given the backbone: the trained ones (mask: bits)."""
    state = {name: p.detach().to("cpu", copy=True).contiguous()
             for name, p in model.named_parameters() if p.requires_grad}
    if mcfg.name == "mask":
        state = mask.pack(model, state)
    return state


def load_task_state(model: nn.Module, mcfg, state: dict[str, torch.Tensor]) -> None:
    """Inverse of task_state on a model built the same way (backbone + apply_method)."""
    if mcfg.name == "mask":
        state = mask.unpack(model, state)
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad and not (mcfg.name == "mask" and n.endswith(".scores"))}
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise KeyError(f"task weights do not fit this model (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
