"""BitFit (Ben Zaken et al. 2022): train only the backbone's bias terms (and the task head).

Written by hand: it is one rule over parameter names, no library needed. "All bias terms" as in
the paper: query/key/value, attention output, intermediate, output and LayerNorm biases (and the
pooler's, where the backbone has one).
"""
from __future__ import annotations


def apply(model, mcfg, spec, head_names) -> list[str]:
    biases = [name for name, _ in model.named_parameters() if name.endswith(".bias")]
    if not [b for b in biases if b not in head_names]:
        raise ValueError("method=bitfit: the backbone has no bias terms (e.g. ModernBERT's linears and norms are "
                         "bias-free), so only the task head would train; pick lora, adapter or another method")
    return biases
