"""The fine-tuning facts of a backbone's architecture (pretrain/hf/finetune_spec.py), found through
the architecture registry from the checkpoint's model_type, and module lookups by class name."""
from __future__ import annotations

from torch import nn

from pretrain.hf.finetune_spec import FinetuneSpec
from pretrain.train.config import ConfigError


def spec_for(model_type: str, where: str) -> FinetuneSpec:
    from pretrain.hf.convert import ExportError, converter_for

    if model_type == "electra":   # an ELECTRA discriminator (objective=electra's export, or Google's)
        from pretrain.hf.electra import finetune_spec

        return finetune_spec()
    try:
        return converter_for(model_type).finetune_spec(model_type)
    except ExportError as e:
        raise ConfigError(f"{where}: {e}") from None


def modules_of(model: nn.Module, class_names) -> list[nn.Module]:
    """Every submodule whose class is one of `class_names` (shared modules once)."""
    names = set(class_names)
    return [m for m in model.modules() if type(m).__name__ in names]


def submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ConfigError(f"the backbone has no {path!r} module (a {type(model).__name__})") from None
