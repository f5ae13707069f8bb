"""Training-step throughput of our model vs transformers' BertForPreTraining (same config, batch,
15% MLM labels), fp32 and bf16 autocast, plus MFU against the measured matmul peak.

    .venv/bin/python bench/model.py                  # bert-mini + bert-base, eager + compile
    .venv/bin/python bench/model.py --models bert-mini --no-compile --steps 3

A step is forward + backward + AdamW step. Reported: median step time over `--steps` timed steps
after `--warmup` steps, tokens/s (= B*L / step time), speed-up over HF, MFU = model FLOPs
(pretrain.model.flops, same count for both models) / step time / measured torch.mm peak.
No timed asserts: results go to docs/benchmarks.md by hand.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.data.config import ObjectiveConfig  # noqa: E402
from pretrain.hf.convert import to_hf_config  # noqa: E402
from pretrain.model import ModelConfig, build_model, flops_per_step  # noqa: E402
from pretrain.objectives import pretraining_loss  # noqa: E402

WIDTHS = {"bert-mini": (4, 256, 4, 1024), "bert-base": (12, 768, 12, 3072)}
DEFAULT_BATCH = {"bert-mini": 32, "bert-base": 8}


def matmul_peak(dtype: torch.dtype, n: int = 4096, reps: int = 5) -> float:
    """Measured FLOP/s of torch.mm on n x n squares (best of reps: the attainable peak)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times)


def make_batch(cfg: ModelConfig, batch: int, seq: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, cfg.vocab_size, (batch, seq), generator=g)
    labels = torch.where(torch.rand(batch, seq, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    tt = torch.zeros_like(ids)
    tt[:, seq // 2:] = 1
    return {"input_ids": ids, "token_type_ids": tt, "attention_mask": torch.ones_like(ids), "labels": labels,
            "sentence_label": torch.randint(0, 2, (batch,), generator=g)}


def ours_step_fn(model, batch, obj_cfg):
    n_masked = int((batch["labels"] != -100).sum())

    def loss():
        out = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], batch["labels"])
        return pretraining_loss(out, batch, n_masked, obj_cfg)[0]
    return loss


def hf_step_fn(model, batch):
    def loss():
        return model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                     attention_mask=batch["attention_mask"], labels=batch["labels"],
                     next_sentence_label=batch["sentence_label"]).loss
    return loss


class Runner:
    """One model + AdamW + loss closure; `step()` times one training step."""

    def __init__(self, model, loss_fn, dtype):
        self.model, self.loss_fn = model, loss_fn
        # fused: one kernel over all parameters (the for-loop default on CPU costs ~20% of a
        # bert-mini step); the same optimizer for every implementation.
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        self.dtype = dtype
        self.times: list[float] = []

    def step(self) -> float:
        amp = (torch.autocast("cpu", dtype=torch.bfloat16) if self.dtype == torch.bfloat16
               else contextlib.nullcontext())
        t = time.perf_counter()
        with amp:
            loss = self.loss_fn()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t


def time_interleaved(runners: dict, warmup: int, steps: int) -> dict:
    """Median step time per runner. Steps alternate between runners (ABAB...) so load from other
    processes on a shared machine hits every implementation alike."""
    for runner in runners.values():
        for _ in range(warmup):
            runner.step()
    times = {name: [] for name in runners}
    for _ in range(steps):
        for name, runner in runners.items():
            times[name].append(runner.step())
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=list(WIDTHS))
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=None, help="default: 32 (bert-mini), 8 (bert-base)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    args = p.parse_args()
    torch.manual_seed(0)
    # Adam's second moments underflow into fp32 denormals after a few steps; x86 handles
    # denormals in microcode (10-100x slower), which would time the CPU, not the model.
    torch.set_flush_denormal(True)
    from transformers import BertForPreTraining

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: matmul_peak(dtypes[name]) for name in args.precisions}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; matmul peak: "
          + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()), flush=True)
    print("| model | precision | impl | batch x seq | step s | tokens/s | vs HF | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    obj_cfg = ObjectiveConfig(sentence_task="nsp")
    for name in args.models:
        layers, hidden, heads, inter = WIDTHS[name]
        cfg = ModelConfig(arch="bert", vocab_size=30522, hidden_size=hidden, num_layers=layers, num_heads=heads,
                          intermediate_size=inter, sentence_head="nsp")
        bsz = args.batch or DEFAULT_BATCH[name]
        batch = make_batch(cfg, bsz, args.seq)
        n_masked = int((batch["labels"] != -100).sum())
        flops = flops_per_step(cfg, bsz, args.seq, n_masked)
        for prec in args.precisions:
            dtype = dtypes[prec]
            ours = build_model(cfg).train()
            hf = BertForPreTraining(to_hf_config(cfg)).train()
            runners = {"transformers": Runner(hf, hf_step_fn(hf, batch), dtype),
                       "ours": Runner(ours, ours_step_fn(ours, batch, obj_cfg), dtype)}
            if not args.no_compile:
                compiled = torch.compile(build_model(cfg).train())
                runners["ours+compile"] = Runner(compiled, ours_step_fn(compiled, batch, obj_cfg), dtype)
                try:
                    runners["ours+compile"].step()  # compile outside the timed rounds
                except Exception as e:  # a missing compiler must not hide the other results
                    print(f"| {name} | {prec} | ours+compile | failed: {type(e).__name__}: {str(e)[:80]} |||||")
                    del runners["ours+compile"]
            times = time_interleaved(runners, args.warmup, args.steps)
            peak = max(peaks[prec], matmul_peak(dtype))  # re-measured: the machine may be shared
            for impl, t in times.items():
                print(f"| {name} | {prec} | {impl} | {bsz}x{args.seq} | {t:.3f} | {bsz * args.seq / t:,.0f} "
                      f"| {times['transformers'] / t:.2f}x | {100 * flops / t / peak:.1f}% |", flush=True)
            print(f"<!-- {name} {prec}: matmul peak used for MFU {peak / 1e9:.1f} GFLOP/s -->", flush=True)

if __name__ == "__main__":
    main()
