"""Scenarios for test_cuda.py that need a process group: run as 1 rank under torchrun on a GPU.

usage: python -m torch.distributed.run --nproc_per_node 1 _cuda_worker.py SCENARIO OUT.json
"""
from __future__ import annotations

import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "parallel"))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))

from toy import Counted, ToyBert, rank_micro_batches, toy_loss  # noqa: E402

from parallel.config import OptimConfig, ParallelConfig, PrecisionConfig, ScheduleConfig  # noqa: E402
from parallel.engine import build_engine  # noqa: E402
from parallel.topology import all_gather_object, all_reduce_sum, barrier, detect, init_distributed  # noqa: E402


def collectives(topo) -> dict:
    """A pure NCCL group at world size 1: a host tensor handed to NCCL directly fails, the
    topology helpers must place it (or not reach NCCL with it) and still sum correctly."""
    import torch.distributed as dist

    raw_rejects_host = False
    try:
        dist.all_reduce(torch.ones(3))
    except (RuntimeError, ValueError):
        raw_rejects_host = True
    host = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    summed = all_reduce_sum(host.clone())
    on_device = all_reduce_sum(torch.arange(3.0, device=topo.device))
    gathered = all_gather_object({"rank": topo.rank})
    barrier()
    return {"backend": dist.get_backend(), "device": str(topo.device), "raw_rejects_host": raw_rejects_host,
            "summed": summed.cpu().tolist(), "on_device": on_device.cpu().tolist(), "gathered": gathered}


def engine_bf16(topo) -> dict:
    """DeepSpeed ZeRO-2 bf16 on the GPU with both client optimizers; batches come from the host."""
    out = {}
    for optim in ("adamw", "lamb"):
        torch.manual_seed(0)
        engine = build_engine(ToyBert(hidden=64, dropout=0.0), Counted(toy_loss), ParallelConfig(zero_stage=2),
                              PrecisionConfig(dtype="bf16"), OptimConfig(name=optim, lr=3e-3, grad_clip=1.0),
                              ScheduleConfig(name="constant", warmup_steps=0), total_steps=20, micro_batch_size=8,
                              grad_accum=2, topo=topo, seed=0)
        losses = [engine.train_step(rank_micro_batches(0, 0, 2, 1, 0, 8))["loss"] for _ in range(8)]
        param = next(engine.ds.module.parameters())  # the DeepSpeed engine's (bf16) module
        out[optim] = {"losses": losses, "param_device": str(param.device), "param_dtype": str(param.dtype)}
    out["max_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    scenario, path = sys.argv[1], sys.argv[2]
    topo = detect()
    init_distributed(topo)
    result = {"collectives": collectives, "engine_bf16": engine_bf16}[scenario](topo)
    if topo.rank == 0:
        with open(path, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
