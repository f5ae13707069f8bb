"""deepspeed.initialize with our optimizer and schedule: where the plain and the pipeline engine
both start (parallel/ds_engine.py, parallel/pipe_engine.py)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import ds_internals
from .config import OptimConfig, ScheduleConfig
from .device import allow_fast_fp32_matmul
from .optim import Lamb, build_optimizer, param_groups, uses_client_optimizer
from .schedules import build_scheduler


def initialize_deepspeed(module: nn.Module, config: dict, optim_cfg: OptimConfig, schedule_cfg: ScheduleConfig,
                         total_steps: Optional[int]):
    """deepspeed.initialize with our optimizer (a client one, or parameter groups for DeepSpeed's
    own) and schedule; the plain and the pipeline engine both start here."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    allow_fast_fp32_matmul(get_accelerator().device_name())

    def make_scheduler(optimizer):
        return build_scheduler(optimizer, schedule_cfg, total_steps)

    if uses_client_optimizer(optim_cfg):
        offloaded = bool(config["zero_optimization"].get("offload_optimizer"))
        device_type = "cpu" if offloaded else get_accelerator().device_name()
        optimizer, params = build_optimizer(module, optim_cfg, device_type=device_type), None
    else:
        optimizer = None
        params = [{k: v for k, v in g.items() if k != "adapt"}
                  for g in param_groups(module, optim_cfg.weight_decay)]
    ds_engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, model_parameters=params,
                                              lr_scheduler=make_scheduler, config=config)
    if isinstance(optimizer, Lamb) and ds_internals.masters_kind(ds_engine) in ("fragments", "stage3"):
        # ZeRO 1-3 and the bf16 optimizer hand LAMB flat partitions: give it the tensor
        # boundaries and the data-parallel group, so trust ratios stay per tensor.
        group, device = ds_engine.seq_data_parallel_group, ds_engine.device

        def reduce_sum(t: torch.Tensor) -> None:
            moved = t.to(device)
            torch.distributed.all_reduce(moved, group=group)
            t.copy_(moved)

        optimizer.use_tensor_segments(lambda: ds_internals.fragment_segments(ds_engine), reduce_sum)
    return ds_engine
