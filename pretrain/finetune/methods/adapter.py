"""Bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP").

Written by hand: AdapterHub's `adapters` library (1.3) requires transformers ~= 4.57 and does not
install next to transformers 5; peft has no Houlsby adapter. Two adapters per layer, each applied
to a sublayer's output projection before the residual + LayerNorm: after the attention output
projection and after the feed-forward output. h -> h + W_up(act(W_down h)), W_up zero at the
start so the adapted model begins as the backbone. ALBERT shares its layers, so the adapters of a
shared layer are shared too.
"""
from __future__ import annotations

from torch import nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


class BottleneckAdapter(nn.Module):
    def __init__(self, dim: int, bottleneck: int, activation: str):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        return h + self.up(self.act(self.down(h)))


class AdaptedLinear(nn.Module):
    """A frozen projection followed by its adapter (the sublayer output the residual adds)."""

    def __init__(self, base: nn.Linear, adapter: BottleneckAdapter):
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x):
        return self.adapter(self.base(x))


def _output_projections(model, spec) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every sublayer output projection (the architecture's spec)."""
    wanted = dict(spec.output_projections)
    seen, found = set(), []
    for module in model.modules():
        attr = wanted.get(type(module).__name__)
        if attr is not None and id(module) not in seen:
            seen.add(id(module))
            found.append((module, attr))
    return found


def apply(model, mcfg, spec, head_names) -> list[str]:
    """Insert adapters; returns the name patterns of the parameters this method trains."""
    projections = _output_projections(model, spec)
    if not projections:
        raise ValueError(f"method=adapter: found no layer output projections {spec.output_projections} in this model")
    for parent, attr in projections:
        base = getattr(parent, attr)
        setattr(parent, attr, AdaptedLinear(base, BottleneckAdapter(base.out_features, mcfg.bottleneck, mcfg.activation)))
    trained = [".adapter."]
    if mcfg.train_layer_norm:
        trained += [name + "." for name, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
    return trained
