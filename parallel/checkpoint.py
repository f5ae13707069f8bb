"""Checkpoint metadata, integrity checks and offline helpers (no engine, no process group).

Why a sidecar `parallel_meta.json`: the engine must know a checkpoint's world size and ZeRO stage
*before* deepspeed.initialize (load_universal is an initialize-time flag), and must refuse a
half-written or foreign checkpoint with one clear line instead of a DeepSpeed stack trace.
The meta file is written last, after every rank finished writing, and lists every file with its
size, so a missing or truncated file is detected without unpickling anything.

Trust boundary: every checkpoint read in this repository (ours, and DeepSpeed's own
load_checkpoint / zero_to_fp32 / ds_to_universal) runs inside `weights_only_loads()`, so torch's
weights-only unpickler reads tensors, containers and the few DeepSpeed classes listed in
`SAFE_GLOBALS`, and never runs code from a file. Exports are safetensors only.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from torch import nn

META_FILE = "parallel_meta.json"
FORMAT = "parallel-ckpt/1"
UNIVERSAL_DIR = "universal"
TMP_SUFFIX = ".tmp"   # our own atomic writes (meta, latest) before their rename: never part of a save

# The non-tensor classes DeepSpeed 0.19.8 pickles into its checkpoint files, found by loading real
# ZeRO 0-3 x fp32/bf16 checkpoints (1 and 2 ranks) and their universal conversions weights-only
# (tests/parallel/test_engine_dist.py keeps doing so). Plain data holders: allowing them runs no code.
# DynamicLossScaler replaces LossScaler in fp16 runs (read from DeepSpeed's CreateLossScaler).
SAFE_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed (half-written, truncated, other model shape)."""


@dataclass(frozen=True)
class Layout:
    """How a run is laid out over processes: what decides whether a checkpoint loads as it is."""

    world_size: int
    zero_stage: int
    dtype: str
    pipeline_stages: int = 1
    pipeline_partition: str = "parameters"   # only meaningful with pipeline_stages > 1


@dataclass(frozen=True)
class Resume:
    """A checkpoint that passed `inspect_checkpoint` for a layout, and how to load it."""

    path: str
    mode: str          # "plain" (same layout) | "universal" (re-sharded through DeepSpeed's format)
    meta: dict


def model_signature(model: nn.Module) -> str:
    """Hash of parameter names and shapes (ZeRO-3 partitioned params report ds_shape)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        shape = tuple(getattr(p, "ds_shape", p.shape))
        h.update(f"{name}:{list(shape)};".encode())
    return h.hexdigest()[:16]


def _safe_globals() -> list:
    out = []
    for dotted in SAFE_GLOBALS:
        module, _, name = dotted.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # another DeepSpeed version: it will name what it needs
            continue
    return out


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every torch.load inside, ours and DeepSpeed's, runs with weights_only=True.

    DeepSpeed passes weights_only=False to torch.load in load_checkpoint, zero_to_fp32 and
    ds_to_universal; torch's documented TORCH_FORCE_WEIGHTS_ONLY_LOAD overrides that per call, and
    `SAFE_GLOBALS` allows the few DeepSpeed classes its files hold. Process-wide while active (an
    environment variable): call from the training thread only.
    """
    import torch

    previous = os.environ.get(_FORCE_WEIGHTS_ONLY)
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            yield
    finally:
        if previous is None:
            os.environ.pop(_FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[_FORCE_WEIGHTS_ONLY] = previous


def list_files(ckpt_dir: str) -> dict[str, int]:
    """Relative path -> size of every file DeepSpeed wrote (our own meta, tmp files, universal excluded)."""
    out = {}
    for root, dirs, files in os.walk(ckpt_dir):
        dirs[:] = [d for d in dirs if not (root == ckpt_dir and d.startswith(UNIVERSAL_DIR))]
        for f in files:
            path = os.path.join(root, f)
            rel = os.path.relpath(path, ckpt_dir)
            if rel != META_FILE and not rel.startswith("latest") and not rel.endswith(TMP_SUFFIX):
                out[rel] = os.path.getsize(path)
    return out


def write_meta(ckpt_dir: str, meta: dict) -> None:
    """Atomic write (tmp + rename) of the meta file; call on one rank after a barrier."""
    meta = dict(meta, format=FORMAT, files=list_files(ckpt_dir))
    tmp = os.path.join(ckpt_dir, META_FILE + TMP_SUFFIX)
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(ckpt_dir, META_FILE))


def peek_checkpoint(ckpt_dir: str) -> dict:
    """Read the meta (world_size, zero_stage, dtype, model_signature, ...) without DeepSpeed."""
    path = os.path.join(ckpt_dir, META_FILE)
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"checkpoint {ckpt_dir}: no such directory")
    try:
        with open(path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {ckpt_dir}: incomplete ({META_FILE} missing: "
                              "the save did not finish)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ckpt_dir}: unreadable {META_FILE} ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {ckpt_dir}: unknown format {meta.get('format')!r}")
    return meta


def verify_files(ckpt_dir: str, meta: dict) -> None:
    """Every file the save wrote is present with its recorded size."""
    for rel, size in sorted(meta.get("files", {}).items()):
        path = os.path.join(ckpt_dir, rel)
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint {ckpt_dir}: file {rel} is missing")
        if os.path.getsize(path) != size:
            raise CheckpointError(f"checkpoint {ckpt_dir}: file {rel} is truncated "
                                  f"({os.path.getsize(path)} of {size} bytes)")


def check_compatible(ckpt_dir: str, meta: dict, signature: str) -> None:
    if meta.get("model_signature") != signature:
        raise CheckpointError(f"checkpoint {ckpt_dir}: model shape differs from the configured model "
                              f"(signature {meta.get('model_signature')} != {signature})")


def resume_mode(ckpt_dir: str, meta: dict, world_size: int, zero_stage: int, dtype: str,
                pipeline_stages: int = 1, pipeline_partition: str = "parameters") -> str:
    """How to load `meta`'s checkpoint into this layout: "plain" or "universal".

    Measured with DeepSpeed 0.19.8 on CPU (see docs/parallel.md):
      same world size, ZeRO stage and dtype    -> plain (bit-identical continuation)
      ZeRO-0 -> ZeRO-0, same dtype, any world  -> plain (the full optimizer state is one file)
      ZeRO-1/2 -> ZeRO-1/2, any world or dtype -> universal
      ZeRO-3 -> ZeRO-3, any world or dtype     -> universal
    With a pipeline on either side (pipeline_stages > 1, ZeRO <= 1):
      same stages, partition, ZeRO stage, dtype, world size -> plain
      same stages and partition, ZeRO-0 -> ZeRO-0 fp32, any replicas -> plain (per-stage files)
      ZeRO-1 pipeline <-> ZeRO-1/2 plain or pipeline, any stages / replicas / dtype -> universal
        (our own conversion, keyed by the plain model's parameter names)
    Anything else raises CheckpointError.
    """
    src_stage, src_world = meta["zero_stage"], meta["world_size"]
    src_dtype, src_pp = meta.get("dtype"), meta.get("pipeline_stages", 1)
    src_part = meta.get("pipeline", {}).get("partition", "parameters")
    if src_pp == pipeline_stages == 1:
        if (src_world, src_stage, src_dtype) == (world_size, zero_stage, dtype):
            return "plain"
        if src_stage == zero_stage == 0 and src_dtype == dtype:
            return "plain"
        if src_stage in (1, 2) and zero_stage in (1, 2):
            return "universal"
        if src_stage == zero_stage == 3:
            return "universal"
    else:
        same_split = src_pp == pipeline_stages and src_part == pipeline_partition
        if same_split and (src_world, src_stage, src_dtype) == (world_size, zero_stage, dtype):
            return "plain"
        if same_split and src_stage == zero_stage == 0 and src_dtype == dtype:
            return "plain"
        if src_stage in (1, 2) and zero_stage in (1, 2):
            return "universal"
        if src_stage == 0 or zero_stage == 0:
            raise CheckpointError(
                f"checkpoint {ckpt_dir}: cannot resume a ZeRO-{src_stage} {src_dtype} checkpoint of {src_pp} pipeline "
                f"stage(s) ({src_part}) as ZeRO-{zero_stage} {dtype} with {pipeline_stages} stage(s) "
                f"({pipeline_partition}): a ZeRO-0 pipeline checkpoint keeps its optimizer state per stage, so it "
                "resumes only with the same stages and partition; train with parallel.zero_stage=1 "
                "(parallel=pipeline) to change the number of stages")
    raise CheckpointError(
        f"checkpoint {ckpt_dir}: cannot resume a ZeRO-{src_stage} {src_dtype} checkpoint of {src_world} "
        f"processes (pipeline {src_pp}) as ZeRO-{zero_stage} {dtype} on {world_size} processes "
        f"(pipeline {pipeline_stages}); supported: ZeRO-0 -> 0 (same dtype), 1/2 -> 1/2, 3 -> 3")


def inspect_checkpoint(ckpt_dir: str, signature: str, layout: Layout) -> Resume:
    """The one check of a checkpoint before anything loads it: meta, files, model shape, layout.

    Returns how to load it into `layout`; raises CheckpointError (one line). Pure file checks (no
    process group, no DeepSpeed), so the trainer can choose what to resume from before building
    the engine. `signature` is `model_signature` of the unwrapped model (before ZeRO-3 partitions it).
    """
    meta = peek_checkpoint(ckpt_dir)
    verify_files(ckpt_dir, meta)
    check_compatible(ckpt_dir, meta, signature)
    mode = resume_mode(ckpt_dir, meta, layout.world_size, layout.zero_stage, layout.dtype,
                       layout.pipeline_stages, layout.pipeline_partition)
    return Resume(ckpt_dir, mode, meta)


def universal_dir(ckpt_dir: str) -> str:
    return os.path.join(ckpt_dir, UNIVERSAL_DIR)


def universal_ready(ckpt_dir: str) -> bool:
    return os.path.isfile(os.path.join(universal_dir(ckpt_dir), "DONE"))


_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_error(ckpt_dir: str, exc: BaseException) -> CheckpointError:
    """One line for a failed load; names the class when the weights-only unpickler refused one."""
    found = _UNSAFE_GLOBAL.search(str(exc))
    if found:
        return CheckpointError(
            f"checkpoint {ckpt_dir}: a file holds a pickled {found.group(1)}, which checkpoints are not "
            "allowed to contain (they are read weights-only; add it to parallel.checkpoint.SAFE_GLOBALS "
            "only if you trust where the checkpoint came from)")
    return CheckpointError(f"checkpoint {ckpt_dir}: cannot load ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})")
