"""The full pretraining model (any registered architecture): embeddings -> layers -> heads."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import registry
from .activations import activation
from .attention import BACKENDS, AttentionContext
from .layout import LAYOUT_KEYS, default_positions
from .config import ModelConfig
from .heads import PretrainingHeads, PretrainingOutput

SENTENCE_HEADS = ("sop", "nsp", "none")
# Batch fields only an objective's own forward reads (pretrain/data/masking.py: one uniform number
# per masked position, for objectives that sample there); the model's forward passes them on.
OBJECTIVE_INPUTS = ("sample_uniform",)
# The batch keys `forward` takes (what an engine hands it from a loader's batch).
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "labels", "position_ids") + LAYOUT_KEYS + OBJECTIVE_INPUTS


class PretrainingModel(nn.Module):
    """An encoder of the registry with MLM + sentence-order (or next-sentence) heads.

    forward(...) computes what the composition of `layers()` computes (tested), on the padded
    rows or, with cfg.unpad, on the real tokens only; per-layer activation checkpointing of the
    encoder layers in training mode. `active_layers` (progressive stacking) runs only the first
    n layer applications; None = all.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.arch = registry.get(cfg.arch)
        parts = self.arch.build(cfg)
        self.embeddings = parts.embeddings
        self.encoder = parts.encoder
        self.heads = PretrainingHeads(cfg, self.embeddings.word_embeddings, parts.final_norm, parts.sentence_dropout)
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.active_layers: Optional[int] = None
        # An objective's own trainable modules (pretrain/objectives: `Objective.build_modules`),
        # trained, checkpointed and partitioned with the model; empty for the MLM family, so the
        # parameter names are the model's own.
        self.objective_modules = nn.ModuleDict()
        self._objective_forward = None

    def attach_objective(self, objective) -> None:
        """Add the objective's modules and, if it has one, route `forward` through its own
        (`objective.forward(model, **inputs)`, which calls `encode`/`heads` as it needs)."""
        for name, module in objective.build_modules(self).items():
            self.objective_modules[name] = module
        self._objective_forward = objective.forward if objective.has_own_forward() else None

    def encoder_layers(self) -> list[nn.Module]:
        layers = self.encoder.ordered()
        return layers if self.active_layers is None else layers[:self.active_layers]

    def layers(self) -> list[nn.Module]:
        """[embeddings, encoder layer x N, heads]. Each maps a tuple to a tuple:
        (input_ids, token_type_ids, attention_mask, position_ids, labels)
        -> (hidden [B,L,H], position_ids, attention_mask, labels) -> ... -> PretrainingOutput.
        ALBERT's shared layer is the same module object N times; the MLM decoder shares its
        Parameter with the word embeddings (a tie across first/last stage)."""
        return [self.embeddings, *self.encoder_layers(), self.heads]

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        all_positions: bool = False,
        **layout,
    ) -> PretrainingOutput:
        """input_ids/token_type_ids/attention_mask/labels/position_ids: [B, L] (docs/architecture.md).
        position_ids given = packed rows (several examples per row, positions restart at 0).
        all_positions=True (or labels=None): mlm_logits at every position, [B, L, V], and
        mlm_labels = labels as given (computed on the padded rows whatever cfg.unpad says).
        layout: the batch's layout fields (pretrain/model/layout.py: cu_seqlens, max_seqlen,
        token_index, example_starts, masked_index), made by the loader on the CPU so this forward
        never asks the device for a shape; absent ones are computed here."""
        unknown = set(layout) - set(LAYOUT_KEYS) - set(OBJECTIVE_INPUTS)
        if unknown:
            raise TypeError(f"PretrainingModel.forward got unexpected arguments {sorted(unknown)}")
        if self._objective_forward is not None:
            return self._objective_forward(self, input_ids=input_ids, token_type_ids=token_type_ids,
                                           attention_mask=attention_mask, labels=labels, position_ids=position_ids,
                                           all_positions=all_positions, **layout)
        # Logits at every position (pads included, as transformers computes them) need the padded rows.
        x, ctx = self.encode(input_ids, token_type_ids, attention_mask, position_ids,
                             unpad=self.cfg.unpad and not all_positions and labels is not None, **layout)
        out = self.heads(x, ctx, None if all_positions else labels)
        if all_positions:
            out = out._replace(mlm_labels=labels)
        return out

    def encode(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
               attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None, *,
               unpad: Optional[bool] = None, ctx: Optional[AttentionContext] = None,
               **layout) -> tuple[torch.Tensor, AttentionContext]:
        """(the encoder's last hidden states in the context's layout ([T, H] unpadded, else
        [B, L, H]), the AttentionContext): what the heads, or an objective's own modules, read.
        `ctx`: a context of the same rows to reuse (a second pass over them, e.g. ELECTRA's
        discriminator after its generator: masks, rotary tables and indices are made once)."""
        if ctx is None:
            layout = {k: v for k, v in layout.items() if k in LAYOUT_KEYS}   # not an objective's own inputs
            ctx = AttentionContext(attention_mask, position_ids, input_ids,
                                   unpad=self.cfg.unpad if unpad is None else unpad,
                                   backend=self.cfg.attention_backend, layout=layout)
        tt = None if token_type_ids is None else ctx.to_layout(token_type_ids)
        x = self.embeddings((ctx.to_layout(input_ids), tt), ctx)
        for layer in self.encoder_layers():
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, ctx, use_reentrant=False)
            else:
                x = layer(x, ctx)
        return x, ctx

    def set_packed_rows(self, packed: bool) -> None:
        """Whether rows may hold several examples, for the pipeline form, whose layers see only
        the tensors DeepSpeed carries between stages: False (data.packing off) lets every stage
        skip the per-example mask and position tables. The plain forward reads it off the batch."""
        for layer in (*self.encoder.layers, self.heads):
            layer.packed_rows = bool(packed)

    def pipeline_inputs(self, batch: dict) -> tuple:
        """The first pipeline layer's input tuple for a batch (absent optional keys filled in)."""
        ids = batch["input_ids"]
        tt = batch.get("token_type_ids")
        mask = batch.get("attention_mask")
        pos = batch.get("position_ids")
        return (ids, torch.zeros_like(ids) if tt is None else tt, torch.ones_like(ids) if mask is None else mask,
                default_positions(ids).contiguous() if pos is None else pos, batch["labels"])


def validate(cfg: ModelConfig) -> None:
    """One-line errors for config mistakes a user can make (the architecture adds its own)."""
    arch = registry.get(cfg.arch)
    if cfg.sentence_head not in SENTENCE_HEADS:
        raise ValueError(f"model.sentence_head={cfg.sentence_head!r}: expected one of {SENTENCE_HEADS}")
    if not cfg.vocab_size or cfg.vocab_size <= 0:
        raise ValueError("model.vocab_size is unset: the trainer fills it from the data manifest before build_model")
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"model.hidden_size={cfg.hidden_size} is not divisible by model.num_heads={cfg.num_heads}")
    if cfg.attention_backend not in BACKENDS:
        raise ValueError(f"model.attention_backend={cfg.attention_backend!r}: expected one of {BACKENDS}")
    activation(cfg.hidden_act)
    arch.validate(cfg)


def build_model(cfg: ModelConfig) -> PretrainingModel:
    """A freshly initialised model (continued pretraining from cfg.init_from is
    `pretrain.hf.export.load_hf_pretrained`, which the trainer calls when init_from is set)."""
    validate(cfg)
    model = PretrainingModel(cfg)
    model.arch.init_weights(model, cfg)
    return model
