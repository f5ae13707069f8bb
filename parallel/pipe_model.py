"""A DeepSpeed PipelineModule built from a plain model's ordered layers (`model.layers()`).

Why from the plain model's own modules: the pipelined model is then the same classes with the
same initial weights as the plain one (same seed -> same `build_model` -> same Parameters), and
every parameter keeps a plain-model name (`PipeLayout.plain_names`), which is what checkpoint
conversion and export are keyed by.

Ties are found, not declared: a module object listed more than once (ALBERT's shared layer) or a
Parameter held by two layers (the MLM decoder = the word embeddings) becomes a DeepSpeed tied
layer, so the copies on different stages are broadcast at start and after a load and their
gradients are all-reduced over the stages that hold them (ReduceTiedGrads), and the copies past
the first are flagged `ds_pipe_replicated` so gradient norms count them once.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import nn

PARTITIONS = ("parameters", "uniform")   # DeepSpeed's methods; or "type:<layer class regex>"
TYPE_PREFIX = "type:"


def _run(module: nn.Module, inputs):
    """forward_fn of a tied layer's later occurrences (DeepSpeed calls it through a partial)."""
    return module(inputs)


@functools.lru_cache(maxsize=None)
def _tied_spec_class():
    from deepspeed.pipe import TiedLayerSpec

    class PrebuiltTiedSpec(TiedLayerSpec):
        """A TiedLayerSpec whose build() returns an existing module instead of constructing one."""

        def __init__(self, key: str, module: nn.Module, tied_attrs: list[str], forward_fn=None):
            super().__init__(key, type(module), forward_fn=forward_fn, tied_weight_attr=tied_attrs)
            self.module = module

        def build(self, log=False):
            return self.module

    return PrebuiltTiedSpec


@dataclass
class Tie:
    key: str
    layers: list[int]                       # global layer indices holding the tied weight(s)
    attrs: dict[int, list[str]]             # layer index -> tied parameter paths in that layer


@dataclass
class PipeLayout:
    """Everything about the split that does not need a process group (computable before init).

    parts: DeepSpeed's partition boundaries (stage s holds layers parts[s]:parts[s+1]).
    plain_names: pipeline-module parameter name -> the plain model's (first) name of that
        Parameter, for every layer of every stage (the same for any number of stages).
    layer_prefixes: global layer index -> the plain model's module name + "." (layer files hold
        `layer.state_dict()`, so prefix + key is the plain state_dict key).
    """

    num_stages: int
    partition: str
    parts: list[int]
    ties: list[Tie]
    plain_names: dict[str, str]
    layer_prefixes: list[str]
    layer_types: list[str] = field(default_factory=list)

    def stage_of(self, layer: int) -> int:
        for s in range(self.num_stages):
            if self.parts[s] <= layer < self.parts[s + 1]:
                return s
        raise IndexError(layer)

    def stage_layers(self, stage: int) -> range:
        return range(self.parts[stage], self.parts[stage + 1])

    def to_meta(self) -> dict:
        return {"stages": self.num_stages, "partition": self.partition, "parts": list(self.parts),
                "plain_names": dict(self.plain_names), "layer_prefixes": list(self.layer_prefixes),
                "ties": {t.key: t.layers for t in self.ties}}


def find_ties(layers: Sequence[nn.Module]) -> list[Tie]:
    """Groups of layers that share a module object or a Parameter (union-find over layer indices)."""
    parent = list(range(len(layers)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_by_module: dict[int, int] = {}
    first_by_param: dict[int, int] = {}
    for i, layer in enumerate(layers):
        for j in [first_by_module.setdefault(id(layer), i)] + [
                first_by_param.setdefault(id(p), i) for p in layer.parameters()]:
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(layers)):
        groups.setdefault(root(i), []).append(i)
    ties = []
    for members in groups.values():
        if len(members) < 2:
            continue
        attrs = {}
        for i in members:
            others = {id(p) for j in members if layers[j] is not layers[i] for p in layers[j].parameters()}
            repeated = sum(layers[j] is layers[i] for j in members) > 1
            attrs[i] = [n for n, p in layers[i].named_parameters() if repeated or id(p) in others]
        ties.append(Tie(f"tie{min(members):03d}", sorted(members), attrs))
    return ties


def _param_counts(layers: Sequence[nn.Module]) -> list[int]:
    """What DeepSpeed's 'parameters' method weighs (a shared module counts at every occurrence)."""
    return [sum(p.numel() for p in layer.parameters() if p.requires_grad) for layer in layers]


def check_partition(method: str) -> None:
    if method not in PARTITIONS and not (method.startswith(TYPE_PREFIX) and len(method) > len(TYPE_PREFIX)):
        raise ValueError(f"parallel.pipeline_partition={method!r}: expected {' or '.join(PARTITIONS)} or "
                         f"{TYPE_PREFIX}<layer class regex> (e.g. {TYPE_PREFIX}EncoderLayer)")


def partition(layers: Sequence[nn.Module], num_stages: int, method: str) -> list[int]:
    """The same boundaries DeepSpeed's PipelineModule computes (deepspeed.runtime.utils)."""
    from deepspeed.runtime import utils as ds_utils

    check_partition(method)
    if method == "uniform":
        return list(ds_utils.partition_uniform(len(layers), num_stages))
    if method == "parameters":
        return [int(x) for x in ds_utils.partition_balanced(_param_counts(layers), num_stages)]
    import re

    pattern = re.compile(method[len(TYPE_PREFIX):], re.IGNORECASE)
    weights = [1 if pattern.search(type(layer).__name__) else 0 for layer in layers]
    if not any(weights):
        raise ValueError(f"parallel.pipeline_partition={method!r}: no layer of that type in the model")
    return [int(x) for x in ds_utils.partition_balanced(weights, num_stages)]


def pipe_layout(model: nn.Module, num_stages: int, method: str) -> PipeLayout:
    """Split `model.layers()` into `num_stages` stages; one-line ValueError when it cannot."""
    layers = model.layers()
    n_encoder = len(layers) - 2
    if num_stages > n_encoder:
        raise ValueError(f"parallel.pipeline_stages={num_stages} exceeds the model's {n_encoder} encoder layers "
                         "(model.num_layers): every stage needs at least one")
    parts = partition(layers, num_stages, method)
    for s in range(num_stages):
        if parts[s + 1] <= parts[s]:
            raise ValueError(f"parallel.pipeline_partition={method!r} leaves pipeline stage {s} of {num_stages} "
                             "empty for this model; use fewer stages or another partition method")
    ties = find_ties(layers)
    tie_of = {i: t for t in ties for i in t.layers}
    for t in ties:
        stages = {}
        for i in t.layers:
            s = parts_stage(parts, i)
            if stages.setdefault(s, layers[i]) is not layers[i]:
                raise ValueError(f"pipeline stage {s} would hold two different layers tied by {t.key} "
                                 f"(layers {t.layers}); use more pipeline stages or another partition")
    names = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), module_name)
    canonical = {}
    for name, p in model.named_parameters():
        canonical.setdefault(id(p), name)
    plain_names, prefixes = {}, []
    for i, layer in enumerate(layers):
        prefixes.append(names[id(layer)] + ".")
        head = f"tied_modules.{tie_of[i].key}" if i in tie_of else str(i)
        for local, p in layer.named_parameters():
            if plain_names.setdefault(f"{head}.{local}", canonical[id(p)]) != canonical[id(p)]:
                raise ValueError(f"layers tied by {head} both name a different parameter {local!r}")
    return PipeLayout(num_stages, method, parts, ties, plain_names, prefixes, [type(m).__name__ for m in layers])


def parts_stage(parts: Sequence[int], layer: int) -> int:
    return max(s for s in range(len(parts) - 1) if parts[s] <= layer)


@functools.lru_cache(maxsize=None)
def _module_class():
    from deepspeed.pipe import PipelineModule

    class StagedPipelineModule(PipelineModule):
        """PipelineModule with two additions: a hook before every forward pass (the engine seeds
        dropout per micro-batch there), and `ds_pipe_replicated` limited to the tied weights.

        DeepSpeed flags *every* parameter of a tied module on the non-first stages as replicated;
        our tied heads module also holds untied weights (dense, LayerNorm, bias, sentence head),
        which must count in the gradient norm.
        """

        before_forward: Optional[Callable[[], None]] = None

        def forward(self, forward_input):
            if self.before_forward is not None and self.training:
                self.before_forward()
            return super().forward(forward_input)

        def _synchronize_tied_weights(self):
            with torch.no_grad():  # DeepSpeed broadcasts into Parameters in place; keep autograd out
                super()._synchronize_tied_weights()

        def _index_tied_modules(self):
            comms = super()._index_tied_modules()
            for comm in comms.values():
                tied = {id(self._recursive_getattr(comm["module"], a)) for a in comm["weight_attr"]}
                for p in comm["module"].parameters():
                    if id(p) not in tied:
                        p.ds_pipe_replicated = False
            return comms

    return StagedPipelineModule


def checkpoint_function():
    """Per-encoder-layer activation checkpointing: torch's non-reentrant checkpoint, so a stage's
    first layer need not get inputs that require grad and the RNG state is replayed exactly."""
    from torch.utils.checkpoint import checkpoint

    return functools.partial(checkpoint, use_reentrant=False)


def build_pipeline_module(model: nn.Module, layout: PipeLayout, topology, loss_fn: Callable,
                          gradient_checkpointing: bool = False) -> nn.Module:
    """The stage of `model` this rank runs, as a PipelineModule (collective: every rank calls).

    Afterwards the parameters of layers on other stages are released (their storage emptied), so
    a stage holds only its share: do not use `model` for anything else.
    """
    spec_cls = _tied_spec_class()
    layers = model.layers()
    tie_of = {i: t for t in layout.ties for i in t.layers}
    seen: set[int] = set()
    specs = []
    for i, layer in enumerate(layers):
        if i in tie_of:
            repeat = id(layer) in seen
            specs.append(spec_cls(tie_of[i].key, layer, tie_of[i].attrs[i], forward_fn=_run if repeat else None))
        else:
            specs.append(layer)
        seen.add(id(layer))
    encoder_type = layout.layer_types[1] if len(layout.layer_types) > 2 else "EncoderLayer"
    kwargs = {}
    if gradient_checkpointing:
        # Only encoder layers are checkpointed (never the embeddings, so they always get
        # gradients). A tied layer's later occurrences (ALBERT) are functools.partial objects.
        kwargs = dict(activation_checkpoint_interval=1, activation_checkpoint_func=checkpoint_function(),
                      checkpointable_layers=[encoder_type, "partial"])
    module = _module_class()(specs, topology=topology, loss_fn=loss_fn, partition_method=layout.partition,
                             **kwargs)
    if list(module.parts) != list(layout.parts):
        raise RuntimeError(f"DeepSpeed partitioned the layers as {module.parts}, expected {layout.parts}")
    held = {id(p) for p in module.parameters()}
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in held:
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
    return module
