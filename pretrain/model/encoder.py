"""The stack of encoder layers (any architecture) and the calling convention layers share."""
from __future__ import annotations

from typing import Optional

from torch import nn

from .attention import AttentionContext


class EncoderLayer(nn.Module):
    """Base of every architecture's encoder layer: `block(hidden, ctx)` does the work.

    Called two ways: `layer(hidden, ctx)` by the model (hidden in the context's layout, padded
    [B,L,H] or unpadded [T,H]), and `layer((hidden [B,L,H], position_ids, attention_mask, labels))`
    in the pipeline form, where each layer builds its own padded context from the carried ids
    (DeepSpeed passes only tensors between stages) and returns the same 4-tuple. There the
    carried position_ids mark packed rows only when `packed_rows` is set: rows of one example
    each then take the key-mask-only path and the cached rotary tables.
    """

    packed_rows = True   # pipeline form: rows may hold several examples (PretrainingModel.set_packed_rows)

    def block(self, hidden, ctx: AttentionContext):
        raise NotImplementedError

    def forward(self, inputs, ctx: Optional[AttentionContext] = None):
        if ctx is not None:
            return self.block(inputs, ctx)
        hidden, position_ids, attention_mask, labels = inputs
        ctx = AttentionContext(attention_mask, position_ids if self.packed_rows else None, hidden, unpad=False)
        return self.block(hidden, ctx), position_ids, attention_mask, labels


class Encoder(nn.Module):
    """`layers` (the distinct modules) applied in `order` (indices into layers; ALBERT repeats
    shared ones). `ordered()` lists the layer applications; a shared module appears several times."""

    def __init__(self, layers: list[nn.Module], order: Optional[list[int]] = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self._order = list(range(len(layers))) if order is None else list(order)

    def ordered(self) -> list[nn.Module]:
        return [self.layers[i] for i in self._order]
