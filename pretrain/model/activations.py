"""Activation functions by the names Hugging Face uses, so configs convert one-to-one."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

# "gelu" is the exact erf form (BERT), "gelu_new" the tanh approximation (ALBERT, GPT-2);
# these are the HF names, which is why to_hf_config can copy hidden_act verbatim.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation called `name`; a one-line error naming the valid choices otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"model.hidden_act={name!r}: expected one of {sorted(ACTIVATIONS)}") from None
