"""Typed configs for the engine. Defaults live in conf/; these are the schema."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ParallelConfig:
    zero_stage: int = 0                 # 0..3
    offload_optimizer: bool = False     # ZeRO-Offload (stage >= 1)
    offload_params: bool = False        # ZeRO-3 only
    pipeline_stages: int = 1            # > 1 builds a PipelineModule (ZeRO <= 1)
    pipeline_partition: str = "parameters"  # DeepSpeed partition_method
    overlap_comm: Optional[bool] = None           # None = on for CUDA with ZeRO >= 1 (ds_config.engine_defaults)
    contiguous_gradients: bool = True
    reduce_bucket_size: Optional[int] = None      # elements; None = from the model size on CUDA, 5e7 elsewhere
    allgather_bucket_size: Optional[int] = None
    backend: Optional[str] = None       # None = nccl when CUDA else gloo


@dataclass
class PrecisionConfig:
    dtype: str = "fp32"                 # "auto" | "fp32" | "bf16" | "fp16"; the engine needs a resolved one
    loss_scale: float = 0.0             # fp16: 0 = dynamic
    initial_scale_power: int = 16
    loss_scale_window: int = 1000
    hysteresis: int = 2
    min_loss_scale: float = 1.0
    # Written by the launcher, not set by users (launch/precision.py): "auto" when dtype was
    # resolved from precision=auto, and the one-line reason for the dtype on this device.
    resolved_from: Optional[str] = None
    reason: Optional[str] = None


@dataclass
class OptimConfig:
    name: str = "adamw"                 # "adamw" | "lamb"
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-6
    weight_decay: float = 0.01
    grad_clip: float = 1.0              # 0 = off
    # torch implementation -> bit-exact resume on CPU; "deepspeed" picks DeepSpeed's fused/CPU Adam.
    impl: str = "torch"                 # "torch" | "deepspeed"


@dataclass
class ScheduleConfig:
    name: str = "linear"                # "linear" | "cosine" | "constant" | "wsd"
    warmup_steps: int = 0
    warmup_fraction: float = 0.0        # used when warmup_steps == 0
    min_lr_ratio: float = 0.0           # final lr = lr * min_lr_ratio
    decay_fraction: float = 0.1         # wsd: last fraction of steps spent decaying
    total_steps: Optional[int] = None   # None = trainer.max_steps, or placed by budget fraction when tokens/time bound the run
