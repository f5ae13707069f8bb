"""Offline reading of pipeline checkpoints, keyed by the plain model's parameter names.

Why our own reader: DeepSpeed's `zero_to_fp32` cannot read pipeline checkpoints and its
`ds_to_universal` expects Megatron's layer naming; but the files are simple. A pipeline save is
  layer_XX-model_states.pt                   one per global layer index: `layer.state_dict()`
  mp_rank_SS_model_states.pt                 per stage: param_shapes, lr scheduler, client state
  [bf16_]zero_pp_rank_D_mp_rank_SS_optim_states.pt   ZeRO-1: flat fp32 partitions + Adam state
and `parallel_meta.json["pipeline"]` (written by the PipelineEngine) maps every pipeline
parameter name to the plain model's name and every layer index to its plain module prefix.
Layer files do not depend on the number of stages; the optimizer files do, which is why a
change of layout goes through the universal form written here (`zero/<plain name>/*.pt`).
Memory: one stage's optimizer files at a time.
"""
from __future__ import annotations

import os
import torch

from .checkpoint import CheckpointError, peek_checkpoint, weights_only_loads

STATE_KEYS = ("fp32", "exp_avg", "exp_avg_sq")
_SHARDED = ("base_optimizer_state", "param_slice_mappings", "single_partition_of_fp32_groups")


def _load(ckpt_dir: str, name: str) -> dict:
    path = os.path.join(ckpt_dir, name)
    try:
        with weights_only_loads():  # the repository's trust boundary (parallel/checkpoint.py)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"checkpoint {ckpt_dir}: cannot read {name} ({type(e).__name__}: {e})") from None


def _zero_file(ckpt_dir: str, dp: int, stage: int) -> str:
    for prefix in ("", "bf16_"):
        name = f"{prefix}zero_pp_rank_{dp}_mp_rank_{stage:02d}_optim_states.pt"
        if os.path.isfile(os.path.join(ckpt_dir, name)):
            return name
    raise CheckpointError(f"checkpoint {ckpt_dir}: no ZeRO optimizer file for stage {stage}, replica {dp}")


def _layer_head(pipe: dict, layer: int) -> str:
    for key, layers in pipe["ties"].items():
        if layer in layers:
            return f"tied_modules.{key}"
    return str(layer)


def layer_state_dict(ckpt_dir: str, meta: dict) -> dict:
    """The module weights from the layer files, under plain state_dict names (as saved: fp32
    unless trained in bf16). A layer listed twice (ALBERT's shared layer) is saved once."""
    pipe = meta["pipeline"]
    out: dict = {}
    for i, prefix in enumerate(pipe["layer_prefixes"]):
        name = f"layer_{i:02d}-model_states.pt"
        if not os.path.isfile(os.path.join(ckpt_dir, name)):
            continue  # a later occurrence of a tied layer
        for k, v in _load(ckpt_dir, name).items():
            out.setdefault(prefix + k, v)
    return out


def stage_zero_states(ckpt_dir: str, meta: dict, stage: int, keys=STATE_KEYS) -> dict:
    """{plain name: ({key: full tensor}, step)} for the parameters stage `stage` holds, merged
    over the data-parallel partitions of its ZeRO-1 optimizer files."""
    pipe = meta["pipeline"]
    names = pipe["plain_names"]
    shapes = {}
    for group in _load(ckpt_dir, f"mp_rank_{stage:02d}_model_states.pt")["param_shapes"]:
        shapes.update(group)
    pieces: dict = {name: [] for name in shapes}
    steps: dict = {}
    for dp in range(int(meta["dp_world_size"])):
        osd = _load(ckpt_dir, _zero_file(ckpt_dir, dp, stage))["optimizer_state_dict"]
        state = osd["base_optimizer_state"]["state"]
        for g, mapping in enumerate(osd["param_slice_mappings"]):
            if g not in state:
                raise CheckpointError(f"checkpoint {ckpt_dir}: stage {stage} has no optimizer state (saved before "
                                      "the first step?)")
            flat = {"fp32": osd["single_partition_of_fp32_groups"][g], "exp_avg": state[g].get("exp_avg"),
                    "exp_avg_sq": state[g].get("exp_avg_sq")}
            for pp_name, frag in mapping.items():
                pieces[pp_name].append({k: flat[k].detach().narrow(0, frag.start, frag.numel).clone() for k in keys})
                steps[pp_name] = state[g].get("step")
        del osd
    out = {}
    for pp_name, shape in shapes.items():
        if pp_name not in names:
            raise CheckpointError(f"checkpoint {ckpt_dir}: parameter {pp_name} is not in the pipeline's name map")
        merged = {k: torch.cat([p[k] for p in pieces[pp_name]]).view(shape) for k in keys}
        out[names[pp_name]] = (merged, steps.get(pp_name))
    return out


def consolidate(ckpt_dir: str, meta: dict) -> dict:
    """Full plain-named fp32 state dict: the fp32 master weights (ZeRO-1) or the layer files
    (ZeRO-0, fp32 training). Tied names (the MLM decoder) hold the same values as their twin."""
    state = layer_state_dict(ckpt_dir, meta)
    if int(meta["zero_stage"]) == 0:
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    pipe = meta["pipeline"]
    masters: dict = {}
    for stage in range(int(pipe["stages"])):
        for name, (tensors, _step) in stage_zero_states(ckpt_dir, meta, stage, keys=("fp32",)).items():
            masters.setdefault(name, tensors["fp32"])
    out = {}
    for i, prefix in enumerate(pipe["layer_prefixes"]):
        head = _layer_head(pipe, i)
        for key in [k for k in state if k.startswith(prefix)]:
            plain = pipe["plain_names"].get(f"{head}.{key[len(prefix):]}")
            out[key] = masters[plain] if plain in masters else state[key].float()
    for key, value in state.items():
        out.setdefault(key, value.float() if value.is_floating_point() else value)
    return out


def to_universal(ckpt_dir: str, out: str) -> None:
    """Write DeepSpeed's universal layout into `out`, keyed by plain names: zero/<name>/{fp32,
    exp_avg, exp_avg_sq, step}.pt, zero/optimizer_state.pt, and stage 0's mp_rank file (lr
    scheduler, step counters, client state). A tied weight is taken from the first stage that
    holds it (the copies are equal: their gradients are all-reduced)."""
    meta = peek_checkpoint(ckpt_dir)
    if int(meta["zero_stage"]) < 1:
        raise CheckpointError(f"checkpoint {ckpt_dir}: a ZeRO-0 pipeline checkpoint has no partitioned optimizer "
                              "state to convert")
    zero_dir = os.path.join(out, "zero")
    os.makedirs(zero_dir, exist_ok=True)
    written: set = set()
    for stage in range(int(meta["pipeline"]["stages"])):
        for name, (tensors, step) in stage_zero_states(ckpt_dir, meta, stage).items():
            if name in written:
                continue
            param_dir = os.path.join(zero_dir, name)
            os.makedirs(param_dir, exist_ok=True)
            for key, tensor in tensors.items():
                torch.save({"param": tensor, "cat_dim": 0}, os.path.join(param_dir, f"{key}.pt"))
            if step is not None:
                torch.save(step, os.path.join(param_dir, "step.pt"))
            written.add(name)
    osd = _load(ckpt_dir, _zero_file(ckpt_dir, 0, 0))["optimizer_state_dict"]
    common = {k: v for k, v in osd.items() if k not in _SHARDED}
    common["param_groups"] = osd["base_optimizer_state"]["param_groups"]
    torch.save(common, os.path.join(zero_dir, "optimizer_state.pt"))
    # One model-states file for every target rank (DeepSpeed checks the count against it).
    model_states = _load(ckpt_dir, "mp_rank_00_model_states.pt")
    model_states.update(mp_world_size=1, module=None, optimizer=None)
    torch.save(model_states, os.path.join(out, "mp_rank_00_model_states.pt"))


def add_aliases(universal: str, names: dict) -> None:
    """Make zero/<pipeline name> point at zero/<plain name>: DeepSpeed's universal loader looks
    parameters up by the live module's names. Idempotent; missing plain entries are skipped."""
    zero_dir = os.path.join(universal, "zero")
    for alias, plain in names.items():
        link = os.path.join(zero_dir, alias)
        if alias == plain or os.path.lexists(link) or not os.path.isdir(os.path.join(zero_dir, plain)):
            continue
        os.symlink(plain, link)
