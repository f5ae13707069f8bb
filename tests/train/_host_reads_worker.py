"""A few real training steps of our model through build_engine (1 process, gloo), recording every
host read of a tensor (item, tolist, nonzero, bool/int/float, ...) made by this project's code
during `train_step`, outside the engine's one reduction. Used by test_step_host_reads.py.

usage: python _host_reads_worker.py ARCH HEAD ZERO OUT_JSON
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


def main() -> None:
    arch, head, zero, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

    from helpers_model import example_ids, modern_cfg, packed_batch, tiny_cfg

    from parallel.config import OptimConfig, ParallelConfig, PrecisionConfig, ScheduleConfig
    from parallel.engine import build_engine
    from parallel.topology import detect
    from pretrain.data.config import ObjectiveConfig
    from pretrain.model import build_model
    from pretrain.model.layout import batch_layout
    from pretrain.model.pretraining import MODEL_INPUTS
    from pretrain.objectives import pretraining_loss

    cfg = (modern_cfg if arch == "modernbert" else tiny_cfg)(sentence_head=head, unpad=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.set_packed_rows(True)
    objective = ObjectiveConfig(sentence_task=head)

    def loss(output, batch, mlm_normalizer, sentence_normalizer=None):
        return pretraining_loss(output, batch, mlm_normalizer, objective, sentence_normalizer=sentence_normalizer)

    engine = build_engine(model, loss, ParallelConfig(zero_stage=zero), PrecisionConfig(dtype="fp32"),
                          OptimConfig(lr=1e-3, grad_clip=1.0), ScheduleConfig(name="constant"), total_steps=10,
                          micro_batch_size=2, grad_accum=2, topo=detect(), model_inputs=MODEL_INPUTS)

    def micro(seed):
        b = packed_batch(cfg, [example_ids(cfg, [5, 6], seed=seed), example_ids(cfg, [9], seed=seed + 1)], seq=12,
                         seed=seed)
        return {**b, **batch_layout(b["attention_mask"], b["position_ids"], b["labels"])}

    engine.train_step([micro(0), micro(1)])   # warm-up step outside the recording
    steps = [[micro(2 + step), micro(4 + step)] for step in range(2)]   # the loader's work, on the CPU
    with OurHostReads() as reads:
        for batches in steps:
            metrics = engine.train_step(batches, carry=lambda: [1.0, 2.0])
    with open(out, "w") as f:
        json.dump({"seen": reads.seen, "carried": metrics["carried"], "loss": metrics["loss"]}, f)


if __name__ == "__main__":
    main()
    os._exit(0)
