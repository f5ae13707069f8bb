"""A few real training steps of our model through build_engine (1 process, gloo), recording every
host read of a tensor (item, tolist, nonzero, bool/int/float, ...) made by this project's code
during `train_step`, outside the engine's one reduction. Used by test_step_host_reads.py.

On a GPU (DEVICE=cuda: bf16, CUDA picked by DeepSpeed) it also runs the recorded steps under
`torch.cuda.set_sync_debug_mode("warn")` and lists every synchronizing CUDA call: as our code's
(outside the allowed frames: a failure) or as DeepSpeed's/torch's own (reported, for the record).

usage: python _host_reads_worker.py ARCH HEAD ZERO OUT_JSON [cpu|cuda]
"""
from __future__ import annotations

import json
import os
import sys

import torch
from torch.overrides import TorchFunctionMode

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "model"))

HOST_READS = {"item", "tolist", "nonzero", "masked_select", "__bool__", "__int__", "__float__", "__index__",
              "cpu", "numpy", "argwhere", "unique", "any", "all"}
OURS = (os.path.join(ROOT, "parallel") + os.sep, os.path.join(ROOT, "pretrain") + os.sep)
# The step's one reduction (DeepSpeedEngine._reduce); the gradient norm DeepSpeed computed inside
# its own step under the ZeRO/bf16 wrappers, which the guard checks before the update (_drop)
# and the step reports (_finish_step).
ALLOWED = {"_reduce", "_finish_step", "_drop"}


def _ours(frame) -> bool:
    return frame is not None and frame.f_code.co_filename.startswith(OURS)


class OurHostReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        frame = sys._getframe(1)   # the caller of the torch op: reads inside torch itself are torch's
        if name in HOST_READS and _ours(frame):
            chain, up = [], frame
            while _ours(up):
                chain.append(up.f_code.co_name)
                up = up.f_back
            if not ALLOWED & set(chain):
                where = os.path.relpath(frame.f_code.co_filename, ROOT)
                self.seen.append(f"{name} in {where}:{frame.f_lineno} ({frame.f_code.co_name})")
        return func(*args, **(kwargs or {}))


class CudaSyncs:
    """Every synchronizing CUDA call while active (sync debug mode "warn" turns each into a Python
    warning, whose stack says who made it)."""

    def __init__(self):
        self.ours: list[str] = []
        self.others: list[str] = []

    def __enter__(self):
        import traceback
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("always")

        def show(message, category, filename, lineno, file=None, line=None):
            if "synchroniz" not in str(message):
                return
            stack = traceback.extract_stack()[:-1]
            mine = [f for f in stack if f.filename.startswith(OURS)]
            names = {f.name for f in mine}
            site = stack[-1] if stack else None
            where = f"{os.path.relpath(site.filename, ROOT)}:{site.lineno} ({site.name})" if site else "?"
            if mine and not ALLOWED & names and site is not None and site.filename.startswith(OURS):
                self.ours.append(where)
            else:
                self.others.append(where)

        warnings.showwarning = show
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)
        return False


def main() -> None:
    arch, head, zero, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    cuda = len(sys.argv) > 5 and sys.argv[5] == "cuda"

    from helpers_model import example_ids, modern_cfg, packed_batch, tiny_cfg

    from parallel.config import OptimConfig, ParallelConfig, PrecisionConfig, ScheduleConfig
    from parallel.engine import build_engine
    from parallel.topology import detect
    from pretrain.data.config import ObjectiveConfig
    from pretrain.model import build_model
    from pretrain.model.layout import batch_layout
    from pretrain.model.pretraining import MODEL_INPUTS
    from pretrain.objectives import build_objective

    cfg = (modern_cfg if arch == "modernbert" else tiny_cfg)(sentence_head=head, unpad=True)
    if cuda:   # the kernels a GPU without flash_attn runs (auto picks them there too)
        cfg.attention_backend = "varlen"
    torch.manual_seed(0)
    model = build_model(cfg)
    model.set_packed_rows(True)
    engine = build_engine(model, build_objective(ObjectiveConfig(sentence_task=head), cfg), ParallelConfig(zero_stage=zero), PrecisionConfig(dtype="bf16" if cuda else "fp32"),
                          OptimConfig(lr=1e-3, grad_clip=1.0), ScheduleConfig(name="constant"), total_steps=10,
                          micro_batch_size=2, grad_accum=2, topo=detect(), model_inputs=MODEL_INPUTS)

    def micro(seed):
        b = packed_batch(cfg, [example_ids(cfg, [5, 6], seed=seed), example_ids(cfg, [9], seed=seed + 1)], seq=12,
                         seed=seed)
        return {**b, **batch_layout(b["attention_mask"], b["position_ids"], b["labels"])}

    engine.train_step([micro(0), micro(1)])   # warm-up step outside the recording
    steps = [[micro(2 + step), micro(4 + step)] for step in range(2)]   # the loader's work, on the CPU
    syncs = CudaSyncs() if cuda else None
    with OurHostReads() as reads:
        if syncs:
            syncs.__enter__()
        try:
            for batches in steps:
                metrics = engine.train_step(batches, carry=lambda: [1.0, 2.0])
        finally:
            if syncs:
                syncs.__exit__(None, None, None)
    result = {"seen": reads.seen, "carried": metrics["carried"], "loss": metrics["loss"]}
    if syncs:
        result.update(cuda_syncs_ours=syncs.ours, cuda_syncs_others=sorted(set(syncs.others)),
                      device=str(next(engine.module.parameters()).device))
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
    os._exit(0)
