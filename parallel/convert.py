"""Conversions of our checkpoints (plain or pipeline, ZeRO 0-3): the full fp32 state dict
(offline export), and DeepSpeed's universal layout (resume in another layout).

Their own module so that parallel/checkpoint.py (inspection, resume modes) and
parallel/pipe_checkpoint.py (the pipeline's files) need not import each other.
"""
from __future__ import annotations

import os

import torch

from .checkpoint import (CheckpointError, load_error, peek_checkpoint, universal_dir, universal_ready,
                         verify_files, weights_only_loads)
from .pipe_checkpoint import consolidate as consolidate_pipeline
from .pipe_checkpoint import to_universal as pipeline_to_universal


def consolidate_fp32(ckpt_dir: str, exclude_frozen: bool = False) -> dict:
    """Offline: the full fp32 state dict of a DeepSpeed checkpoint (ZeRO 0-3, any world size).

    Uses DeepSpeed's zero_to_fp32 (reads the fp32 master partitions) for ZeRO 1-3; pipeline
    checkpoints are read by parallel.pipe_checkpoint (plain names, same contract). Tied weights
    appear under each name and may share storage: clone or de-duplicate before safetensors.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    meta = peek_checkpoint(ckpt_dir)
    verify_files(ckpt_dir, meta)
    parent, tag = os.path.split(os.path.abspath(ckpt_dir))
    if meta.get("pipeline_stages", 1) > 1:
        return consolidate_pipeline(ckpt_dir, meta)
    if meta["zero_stage"] == 0:
        return _stage0_state_dict(ckpt_dir)
    try:
        with weights_only_loads():
            return get_fp32_state_dict_from_zero_checkpoint(parent, tag=tag, exclude_frozen_parameters=exclude_frozen)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a file that is not a checkpoint we can read safely
        raise load_error(ckpt_dir, e) from None


def _stage0_state_dict(ckpt_dir: str) -> dict:
    """ZeRO-0: module weights are in mp_rank_00_model_states.pt (fp32 unless bf16, then upcast)."""
    path = os.path.join(ckpt_dir, "mp_rank_00_model_states.pt")
    try:
        with weights_only_loads():
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise load_error(ckpt_dir, e) from None
    return {k: v.float() if v.is_floating_point() else v for k, v in state["module"].items()}


def to_universal(ckpt_dir: str) -> str:
    """Convert once into <ckpt_dir>/universal (build in a temp dir, rename when complete).

    Runs DeepSpeed's ds_to_universal in-process with --inject_missing_state (needed for
    checkpoints written by deepspeed.initialize-built engines) and one worker (no fork storms);
    a pipeline checkpoint is converted by parallel.pipe_checkpoint instead (plain names either way).
    Call on one rank; the others wait at a barrier.
    """
    import argparse
    import shutil

    from deepspeed.checkpoint import ds_to_universal

    out = universal_dir(ckpt_dir)
    if universal_ready(ckpt_dir):
        return out
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    args = argparse.Namespace(input_folder=ckpt_dir, output_folder=tmp, num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)
    try:
        with weights_only_loads():
            if peek_checkpoint(ckpt_dir).get("pipeline_stages", 1) > 1:
                pipeline_to_universal(ckpt_dir, tmp)
            else:
                ds_to_universal.main(args)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - conversion failures are reported as one line
        raise CheckpointError(f"checkpoint {ckpt_dir}: universal conversion failed "
                              f"({type(e).__name__}: {e})") from e
    finally:
        stray = os.path.join(ckpt_dir, "latest_universal")  # ds_to_universal writes it next to tmp
        if os.path.exists(stray):
            os.remove(stray)
    open(os.path.join(tmp, "DONE"), "w").close()
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
