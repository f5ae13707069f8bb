"""Build the DeepSpeed config dict from the typed configs.

Why a pure function: every key DeepSpeed sees is decided here and unit-testable without starting
processes; user mistakes (fp16 on a device without fp16, ZeRO>=2 with pipeline, offload without
ZeRO) become one-line ValueErrors before deepspeed.initialize.
"""
from __future__ import annotations

from typing import Optional

from .config import OptimConfig, ParallelConfig, PrecisionConfig, ScheduleConfig
from .optim import uses_client_optimizer
from .precision import CHOICES, DTYPES
NEVER = 2**31 - 1  # steps_per_print: DeepSpeed's own step logging stays quiet


def validate(parallel: ParallelConfig, precision: PrecisionConfig, optim: OptimConfig) -> None:
    """One-line errors for combinations that DeepSpeed would reject late or cryptically."""
    if parallel.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"parallel.zero_stage={parallel.zero_stage}: expected 0, 1, 2 or 3")
    if precision.dtype not in CHOICES:
        raise ValueError(f"precision.dtype={precision.dtype!r}: expected one of {', '.join(CHOICES)}")
    if parallel.offload_optimizer and parallel.zero_stage < 1:
        raise ValueError("parallel.offload_optimizer=true needs parallel.zero_stage >= 1")
    if parallel.offload_params and parallel.zero_stage != 3:
        raise ValueError("parallel.offload_params=true needs parallel.zero_stage=3")
    if parallel.pipeline_stages < 1:
        raise ValueError(f"parallel.pipeline_stages={parallel.pipeline_stages}: must be >= 1")
    if parallel.pipeline_stages > 1:
        _validate_pipeline(parallel, precision)
    if precision.dtype == "fp16" and parallel.zero_stage == 0:
        # Measured: DeepSpeed's ZeRO-0 fp16 path (FP16_UnfusedOptimizer) with our optimizers
        # diverges from fp32 after one step, while ZeRO-1/2 fp16 match fp32.
        raise ValueError("precision.dtype=fp16 needs parallel.zero_stage >= 1 "
                         "(ZeRO-0 fp16 is not supported); use parallel=zero1 or precision=bf16")
    uses_client_optimizer(optim)  # validates optim.impl
    if optim.grad_clip < 0:
        raise ValueError(f"optim.grad_clip={optim.grad_clip}: must be >= 0 (0 = off)")


def require_resolved(dtype: str) -> None:
    """The engine runs a concrete dtype; `auto` is resolved once, before the ranks start
    (launch.precision), so every rank of a run trains in the same dtype."""
    if dtype not in DTYPES:
        raise ValueError(f"precision.dtype={dtype!r} reached the engine unresolved; expected one of "
                         f"{', '.join(DTYPES)} (pretrain-launch resolves precision=auto into the run's config.yaml)")


def _validate_pipeline(parallel: ParallelConfig, precision: PrecisionConfig) -> None:
    stages = f"parallel.pipeline_stages={parallel.pipeline_stages}"
    if parallel.zero_stage >= 2:
        raise ValueError(f"{stages} with zero_stage={parallel.zero_stage}: pipeline parallelism supports ZeRO 0-1 "
                         "only (DeepSpeed's pipeline schedules its own gradient reductions, which ZeRO-2/3 "
                         "partitioning would bypass)")
    if parallel.offload_optimizer or parallel.offload_params:
        raise ValueError(f"{stages} with offload: DeepSpeed's pipeline engine does not support optimizer or "
                         "parameter offload (DeepSpeed issue #3866); set parallel.offload_optimizer=false")
    if precision.dtype == "bf16" and parallel.zero_stage == 0:
        raise ValueError(f"{stages} with precision.dtype=bf16 needs parallel.zero_stage=1 (parallel=pipeline): "
                         "DeepSpeed 0.19.8's pipeline bf16 optimizer under ZeRO-0 cannot load its own checkpoints")
    from .pipe_model import check_partition

    check_partition(parallel.pipeline_partition)


def check_device_dtype(dtype: str) -> None:
    """fp16/bf16 need accelerator support; fail at build time instead of deep inside DeepSpeed."""
    from deepspeed.accelerator import get_accelerator

    require_resolved(dtype)
    acc = get_accelerator()
    if dtype == "fp16" and not acc.is_fp16_supported():
        raise ValueError(f"precision.dtype=fp16 is not supported on the {acc.device_name()} "
                         "accelerator (fp16 needs a GPU); use precision=bf16 or fp32")
    if dtype == "bf16" and not acc.is_bf16_supported():
        raise ValueError(f"precision.dtype=bf16 is not supported on the {acc.device_name()} "
                         "accelerator; use precision=fp32")


def accumulates_in_fp32(parallel: ParallelConfig, precision: PrecisionConfig) -> bool:
    """Whether micro-batch gradients are summed in fp32 rather than the training dtype: always for
    fp32; for bf16/fp16 under ZeRO-2/3 (DeepSpeed's `data_types.grad_accum_dtype`: the partitioned
    gradients are kept in fp32; tested against a float64 sum). Not at ZeRO-0/1: DeepSpeed 0.19
    refuses fp32 accumulation at ZeRO-0 with bf16, and at ZeRO-1 it switches to its BF16_Optimizer,
    whose accumulated gradient with grad_accum > 1 we measured 2.7x off the true sum; there the
    micro-batch gradients are summed in bf16/fp16 (the trainer warns when grad_accum > 1)."""
    return precision.dtype == "fp32" or parallel.zero_stage >= 2


CPU_BUCKET = 50_000_000   # elements: DeepSpeed's CPU default order of magnitude; gloo prefers few big buckets


def engine_defaults(parallel: ParallelConfig, device_type: str, model_numel: Optional[int]) -> dict:
    """The values of the `null` (auto) parallel knobs for this device: what a user tuning a CUDA
    run by hand would pick. overlap_comm: on for CUDA with ZeRO >= 1 and no pipeline (DeepSpeed
    turns it off for pipelines itself), off on CPU (gloo gains nothing from it). Buckets: on CUDA
    an eighth of the model's elements, within [5e6, 5e8] (about eight reduce/all-gather rounds per
    step that overlap the backward pass, buffers bounded for large models); 5e7 elsewhere."""
    cuda = device_type == "cuda"
    overlap = parallel.overlap_comm
    if overlap is None:
        overlap = cuda and parallel.zero_stage >= 1 and parallel.pipeline_stages == 1
    bucket = CPU_BUCKET
    if cuda and model_numel:
        bucket = int(min(5e8, max(5e6, model_numel // 8)))
    return {"overlap_comm": bool(overlap),
            "reduce_bucket_size": int(parallel.reduce_bucket_size if parallel.reduce_bucket_size is not None else bucket),
            "allgather_bucket_size": int(parallel.allgather_bucket_size if parallel.allgather_bucket_size is not None
                                         else bucket)}


def build_ds_config(parallel: ParallelConfig, precision: PrecisionConfig, optim: OptimConfig,
                    schedule: Optional[ScheduleConfig], micro_batch_size: int, grad_accum: int,
                    world_size: int, *, load_universal: bool = False, device_type: str = "cpu",
                    model_numel: Optional[int] = None) -> dict:
    """DeepSpeed config. The lr schedule is not in it: engine passes a LambdaLR (schedules.py).

    world_size is the total process count; data-parallel size = world_size / pipeline_stages.
    device_type / model_numel settle the auto knobs (engine_defaults).
    """
    validate(parallel, precision, optim)
    require_resolved(precision.dtype)
    if micro_batch_size < 1 or grad_accum < 1:
        raise ValueError(f"micro_batch_size={micro_batch_size}, grad_accum={grad_accum}: must be >= 1")
    if world_size % parallel.pipeline_stages:
        raise ValueError(f"world size {world_size} is not divisible by "
                         f"parallel.pipeline_stages={parallel.pipeline_stages}")
    dp = world_size // parallel.pipeline_stages
    zero: dict = {"stage": parallel.zero_stage, "contiguous_gradients": parallel.contiguous_gradients,
                  **engine_defaults(parallel, device_type, model_numel)}
    if parallel.zero_stage == 3:
        zero.pop("allgather_bucket_size")  # stage 3 uses prefetch/param knobs instead
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    if parallel.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if parallel.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    config: dict = {
        "train_micro_batch_size_per_gpu": int(micro_batch_size),
        "gradient_accumulation_steps": int(grad_accum),
        "train_batch_size": int(micro_batch_size) * int(grad_accum) * dp,
        "gradient_clipping": float(optim.grad_clip),
        "steps_per_print": NEVER,
        "wall_clock_breakdown": False,
        "zero_optimization": zero,
        "bf16": {"enabled": precision.dtype == "bf16"},
        "fp16": {"enabled": precision.dtype == "fp16"},
    }
    if precision.dtype != "fp32" and accumulates_in_fp32(parallel, precision):
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    if precision.dtype == "fp16":
        config["fp16"].update(loss_scale=float(precision.loss_scale),
                              initial_scale_power=int(precision.initial_scale_power),
                              loss_scale_window=int(precision.loss_scale_window),
                              hysteresis=int(precision.hysteresis),
                              min_loss_scale=float(precision.min_loss_scale))
    if uses_client_optimizer(optim):
        if parallel.offload_optimizer:
            # Our torch optimizer steps on CPU-offloaded fp32 partitions; DeepSpeed refuses a
            # non-DeepSpeed optimizer with offload unless told this explicitly.
            config["zero_force_ds_cpu_optimizer"] = False
    else:
        config["optimizer"] = {"type": "AdamW", "params": {
            "lr": optim.lr, "betas": [float(b) for b in optim.betas], "eps": optim.eps,
            "weight_decay": optim.weight_decay, "adam_w_mode": True}}
    # Our AdamW/LAMB are ordinary torch optimizers; ZeRO wraps them fine (tested).
    config["zero_allow_untested_optimizer"] = True
    if load_universal:
        config["checkpoint"] = {"load_universal": True}
    return config
