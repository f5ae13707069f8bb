"""Every private DeepSpeed name this project relies on, in one place.

DeepSpeed has no public API for some things we need (a module parameter's fp32 master under
the ZeRO-0 bf16 optimizer, relinking ZeRO-1/2 optimizer-state fragments, the pipeline engine's
instruction table, the wrappers' last gradient norm). Each access goes through this module; a
name an upgrade removed raises `DeepSpeedInternalsChanged` naming it (never a silent skip), and
tests/parallel/test_ds_internals.py fails on such an upgrade before any training runs.
`pyproject.toml` pins the DeepSpeed minor release these were read from (0.19).
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

TESTED_DEEPSPEED = "0.19"

# (module, class, attribute): class-level names (methods, class attributes) read below.
CLASS_NAMES = (
    ("deepspeed.runtime.pipe.engine", "PipelineEngine", "_INSTRUCTION_MAP"),
    ("deepspeed.runtime.zero.stage_1_and_2", "DeepSpeedZeroOptimizer", "_lazy_init_hp_params_optimizer_state"),
    ("deepspeed.runtime.bf16_optimizer", "BF16_Optimizer", "_lazy_init_hp_params_optimizer_state"),
)
# Instance attributes (set in __init__), checked on live engines by the tests.
UNFUSED_GROUPS = ("fp16_groups", "fp32_groups")       # FP16_UnfusedOptimizer (ZeRO-0 bf16/fp16)
HP_MAPPING = "_hp_mapping"                            # a module parameter's fp32 fragment (ZeRO-1/2, BF16_Optimizer)
LINKED_FLAG = "_hp_optimizer_states_linked"
GRAD_NORM = "_global_grad_norm"


class DeepSpeedInternalsChanged(RuntimeError):
    """A private DeepSpeed name this project uses is gone: the installed DeepSpeed is not the
    tested one (parallel/ds_internals.py lists them)."""

    def __init__(self, what: str):
        import deepspeed

        super().__init__(f"DeepSpeed {deepspeed.__version__}: {what} is missing; this project is tested with "
                         f"deepspeed {TESTED_DEEPSPEED}.x (parallel/ds_internals.py lists the private names it uses)")


def missing_class_names() -> list[str]:
    """The class-level names of CLASS_NAMES the installed DeepSpeed lacks (empty when all exist)."""
    out = []
    for module, cls, attr in CLASS_NAMES:
        owner = getattr(importlib.import_module(module), cls, None)
        if owner is None or not hasattr(owner, attr):
            out.append(f"{module}.{cls}.{attr}")
    return out


def _require(obj, attr: str):
    if not hasattr(obj, attr):
        raise DeepSpeedInternalsChanged(f"{type(obj).__name__}.{attr}")
    return getattr(obj, attr)


# ------------------------------------------------------------------ pipeline engine
def instruction_map(pipe_engine) -> dict:
    """A copy of the pipeline engine's instruction -> method table (to wrap OptimizerStep)."""
    return dict(_require(type(pipe_engine), "_INSTRUCTION_MAP"))


def set_instruction_map(pipe_engine, table: dict) -> None:
    pipe_engine._INSTRUCTION_MAP = table   # instance attribute: DeepSpeed looks the table up on self


def forget_pipeline_grid() -> None:
    """DeepSpeed keeps the last pipeline engine's process grid as a process-wide default
    (`deepspeed.utils.groups.mpu`), which a later plain engine in the same process would take
    for its own."""
    from deepspeed.utils import groups

    _require(groups, "mpu")
    groups.mpu = None


# ------------------------------------------------------------------ optimizer wrappers
def wrapper_grad_norm(wrapper) -> Optional[float]:
    """The global gradient norm a DeepSpeed optimizer wrapper computed right before it called
    the inner step (None where the wrapper keeps none)."""
    return getattr(wrapper, GRAD_NORM, None)


def masters_kind(ds_engine) -> str:
    """How the fp32 master weights of `ds_engine` are held:
    'module'    the optimizer updates the module's own parameters (fp32, no wrapper);
    'unfused'   FP16_UnfusedOptimizer (ZeRO-0 bf16): one fp32 copy per parameter;
    'fragments' ZeRO-1/2 or the BF16_Optimizer: flat fp32 partitions mapped by `_hp_mapping`;
    'stage3'    ZeRO-3: flat fp32 partitions of each parameter's own slice (`grad_position`)."""
    wrapper, inner = ds_engine.optimizer, ds_engine.basic_optimizer
    if wrapper is inner:
        return "module"
    if type(wrapper).__name__ == "DeepSpeedZeroOptimizer_Stage3":
        for attr in ("grad_position", "fp32_partitioned_groups_flat", "get_param_id"):
            _require(wrapper, attr)
        return "stage3"
    if type(wrapper).__name__ == "FP16_UnfusedOptimizer":
        for attr in UNFUSED_GROUPS:
            _require(wrapper, attr)
        return "unfused"
    _require(wrapper, LINKED_FLAG)
    return "fragments"


def link_fragment_states(wrapper) -> None:
    """DeepSpeed 0.19.8's ZeRO-1/2 and BF16 optimizers link the fragments' optimizer state once,
    right after the *first* param group's first step, so later groups' moments are never linked:
    link again now that every group has its state."""
    _require(wrapper, LINKED_FLAG)
    setattr(wrapper, LINKED_FLAG, False)
    _require(wrapper, "_lazy_init_hp_params_optimizer_state")()


def unfused_master(wrapper, param: torch.Tensor) -> torch.Tensor:
    """The fp32 master copy FP16_UnfusedOptimizer keeps for module parameter `param`."""
    for low, high in zip(_require(wrapper, "fp16_groups"), _require(wrapper, "fp32_groups")):
        for p, master in zip(low, high):
            if p is param:
                return master
    raise KeyError("parameter not held by the optimizer")


def has_fragment(param: torch.Tensor) -> bool:
    """Whether `param` is mapped to a fp32 fragment (False under 'fragments' means: its slice
    of the flat partition lives on other ranks only, or DeepSpeed changed)."""
    return hasattr(param, HP_MAPPING)


def fragment_segments(ds_engine) -> tuple[dict[int, list[tuple[int, int, int]]], int]:
    """Where this rank's flat fp32 partitions hold pieces of the model's parameters:
    ({storage pointer of a flat partition: [(parameter index, start, numel), ...]}, parameter
    count), the index running over `module.parameters()` (the same order on every rank).
    Under ZeRO-1/2 and the bf16 optimizer from each parameter's `_hp_mapping`; under ZeRO-3
    from the optimizer's `grad_position` (sub-group, offset, numel of the rank's slice)."""
    params = list(ds_engine.module.parameters())
    stage3 = masters_kind(ds_engine) == "stage3"
    z3 = ds_engine.optimizer
    out: dict[int, list[tuple[int, int, int]]] = {}
    for index, p in enumerate(params):
        if not p.requires_grad:
            continue
        if stage3:
            group, start, numel = z3.grad_position[z3.get_param_id(p)]
            storage = z3.fp32_partitioned_groups_flat[group].untyped_storage().data_ptr()
        else:
            mapping = _require(p, HP_MAPPING)
            if mapping is None:          # no piece of this tensor in this rank's partition
                continue
            address = _require(mapping, "hp_fragment_address")
            storage = _require(mapping, "hp_fragment").untyped_storage().data_ptr()
            start, numel = address.start, address.numel
        if numel > 0:
            out.setdefault(storage, []).append((index, int(start), int(numel)))
    return out, len(params)
