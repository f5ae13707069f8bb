"""BitFit (Ben Zaken et al. 2022): train only the backbone's bias terms (and the task head).

Written by hand: it is one rule over parameter names, no library needed. "All bias terms" as in
the paper: query/key/value, attention output, intermediate, output and LayerNorm biases (and the
pooler's, where the backbone has one).
"""
from __future__ import annotations


def apply(model, mcfg) -> list[str]:
    return [name for name, _ in model.named_parameters() if name.endswith(".bias")]
