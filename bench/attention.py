"""Padded vs unpadded attention, one-example rows vs packed rows: training-step time of our model.

For each model (bert-mini, modernbert-mini; vocab 8192) and each batch kind (64 rows of `--seq`,
example lengths drawn from the demo corpus' distribution — one example per row, or packed
first-fit as pretrain.data packs them), times forward + backward + AdamW of each way attention
can run (pretrain/model/attention.py), interleaved, median of `--steps` after a warm-up:
  padded  model.unpad=false: every position computed, a [B,1,L,L] mask on packed rows
  sdpa    model.unpad=true, attention_backend=sdpa: the real tokens, masked SDPA on re-padded rows
  varlen  model.unpad=true, attention_backend=varlen: the real tokens, nested-tensor SDPA (global
          layers) and FlexAttention (local windows; on the CPU only without gradients, so there
          the windowed layers of a training step re-pad as sdpa does)
  flash   model.unpad=true, attention_backend=flash (CUDA with flash_attn only)
Also times the attention kernel alone: nested (jagged) SDPA over the examples against one masked
SDPA call over the rows. Prints JSON lines and a Markdown table; one thread per process by
default on the CPU (as each of 2 ranks on 2 cores gets). On a GPU:
  python bench/attention.py --device cuda --dtype bf16 --models bert-base,modernbert-base --seq 512 --rows 32

usage: python bench/attention.py [--seq 64] [--steps 7] [--threads 1] [--lengths /path/lengths.npy]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))


PATHS = {"padded": dict(unpad=False), "sdpa": dict(unpad=True, attention_backend="sdpa"),
         "varlen": dict(unpad=True, attention_backend="varlen"), "flash": dict(unpad=True, attention_backend="flash")}


def model_cfg(preset: str, path: str):
    from omegaconf import OmegaConf

    import conf
    from pretrain.model import ModelConfig

    raw = OmegaConf.load(os.path.join(os.path.dirname(conf.__file__), "model", f"{preset}.yaml"))
    fields = dict(OmegaConf.to_container(raw), vocab_size=8192, hidden_dropout=0.0, attention_dropout=0.0,
                  sentence_head="none", **PATHS[path])
    return ModelConfig(**fields)


def demo_lengths(seq: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Example lengths like the demo corpus' at this max_seq_len: 10% under 12 tokens, median ~32,
    the longest documents filling the row (measured: docs/data.md)."""
    short = rng.integers(4, 20, n)
    mid = rng.integers(20, seq // 2 + 8, n)
    full = np.full(n, seq)
    pick = rng.random(n)
    return np.where(pick < 0.3, short, np.where(pick < 0.75, mid, full)).clip(4, seq)


def make_batch(lengths, rows: int, seq: int, packed: bool, vocab: int, rng: np.random.Generator) -> dict:
    ids = np.zeros((rows, seq), dtype=np.int64)
    mask = np.zeros_like(ids)
    pos = np.zeros_like(ids)
    free = np.full(rows, seq)
    used = 0
    for n in lengths:
        if packed:
            fits = np.flatnonzero(free >= n)
            if not len(fits):
                break
            r = int(fits[0])
        else:
            if used == rows:
                break
            r = used
        at = seq - free[r]
        ids[r, at:at + n] = rng.integers(5, vocab, n)
        mask[r, at:at + n] = 1
        pos[r, at:at + n] = np.arange(n)
        free[r] -= n
        if not packed:
            free[r] = 0
        used += 1
    labels = np.where((rng.random(ids.shape) < 0.15) & (mask > 0), ids, -100)
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
             "labels": torch.from_numpy(labels)}
    if packed:
        batch["position_ids"] = torch.from_numpy(pos)
    return batch


def with_layout(batch: dict, device: torch.device) -> dict:
    """The batch as the loader gives it: layout fields computed on the CPU, tensors on the device."""
    from pretrain.model.layout import batch_layout

    out = dict(batch)
    out.update(batch_layout(batch["attention_mask"], batch.get("position_ids"), batch["labels"]))
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in out.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model, batch, steps: int, device: torch.device, dtype) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    kw = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "labels")}
    out = []
    for _ in range(steps + 1):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            o = model(batch["input_ids"], None, batch["attention_mask"], batch["labels"], **kw)
            loss = torch.nn.functional.cross_entropy(o.mlm_logits.float(), o.mlm_labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        out.append(time.perf_counter() - t0)
    return out[1:]


def kernel_times(lengths, heads: int, head_dim: int, seq: int, steps: int, device: torch.device, dtype) -> dict:
    """Attention forward+backward alone: nested jagged SDPA over the examples vs one masked SDPA
    over the packed rows."""
    import torch.nn.functional as F

    lengths = [int(n) for n in lengths]
    total = sum(lengths)
    dtype = dtype or torch.float32
    q = torch.randn(total, heads, head_dim, device=device, dtype=dtype)
    rows = -(-total // seq) + 2
    x = torch.randn(rows, heads, seq, head_dim, requires_grad=True, device=device, dtype=dtype)
    mask = torch.ones(rows, 1, seq, seq, dtype=torch.bool, device=device)
    res = {}
    try:
        t = []
        for _ in range(steps + 1):
            sync(device)
            t0 = time.perf_counter()
            nt = torch.nested.nested_tensor(list(q.split(lengths)), layout=torch.jagged, requires_grad=True)
            nq = nt.transpose(1, 2)
            F.scaled_dot_product_attention(nq, nq, nq).values().sum().backward()
            sync(device)
            t.append(time.perf_counter() - t0)
        res["nested_s"] = statistics.median(t[1:])
    except Exception as e:  # noqa: BLE001 - report what this torch build cannot do
        res["nested_s"] = f"failed: {type(e).__name__}"
    t = []
    for _ in range(steps + 1):
        sync(device)
        t0 = time.perf_counter()
        F.scaled_dot_product_attention(x, x, x, attn_mask=mask).sum().backward()
        sync(device)
        t.append(time.perf_counter() - t0)
    res["masked_rows_s"] = statistics.median(t[1:])
    return res


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lengths", help="a .npy of example lengths to draw from (default: demo-like)")
    parser.add_argument("--models", default="bert-mini,modernbert-mini")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--paths", default="padded,sdpa,varlen", help=f"any of {','.join(PATHS)}")
    parser.add_argument("--json", help="also write every row here (one JSON object)")
    args = parser.parse_args(argv)
    from pretrain.model import build_model

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    paths = args.paths.split(",")
    rng = np.random.default_rng(0)
    if args.lengths:
        pool = np.load(args.lengths)
        lengths = rng.choice(pool, 4096)
    else:
        lengths = demo_lengths(args.seq, 4096, rng)
    machine = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
               "torch": torch.__version__, "device": str(device), "dtype": args.dtype,
               "cuda": torch.cuda.get_device_name() if device.type == "cuda" else None}
    print(json.dumps({"machine": machine}))
    rows = []
    for preset in args.models.split(","):
        for packed in (False, True):
            host = make_batch(lengths, args.rows, args.seq, packed, 8192, np.random.default_rng(1))
            batch = with_layout(host, device)
            real = int(host["attention_mask"].sum())
            torch.manual_seed(0)
            models = {p: build_model(model_cfg(preset, p)).to(device) for p in paths}
            for p in paths[1:]:
                models[p].load_state_dict(models[paths[0]].state_dict())
            samples = {p: [] for p in paths}
            for _ in range(2):  # interleave the paths
                for p in paths:
                    samples[p] += time_steps(models[p], batch, max(1, args.steps // 2), device, dtype)
            row = {"model": preset, "rows": "packed" if packed else "one example",
                   "fill": round(real / host["input_ids"].numel(), 3)}
            for p in paths:
                step_s = statistics.median(samples[p])
                row[f"{p}_s"] = round(step_s, 4)
                row[f"{p}_tokens_per_s"] = round(real / step_s)
            print(json.dumps(row), flush=True)
            rows.append(row)
            del models
    cfg = model_cfg(args.models.split(",")[-1], "sdpa")
    kern = kernel_times(lengths[:int(args.rows * args.seq * 0.95 / lengths.mean())], cfg.num_heads,
                        cfg.hidden_size // cfg.num_heads, args.seq, args.steps, device, dtype)
    print(json.dumps({"attention_kernel": kern}))
    base = paths[0]
    print("\n| model | rows | fill | " + " | ".join(f"{p} step s" for p in paths) + " | "
          + " | ".join(f"{p} vs {base}" for p in paths[1:]) + " |")
    print("|---|---|---|" + "---|" * (2 * len(paths) - 1))
    for r in rows:
        print(f"| {r['model']} | {r['rows']} | {r['fill']:.2f} | " + " | ".join(f"{r[p + '_s']:.4f}" for p in paths)
              + " | " + " | ".join(f"{r[base + '_s'] / r[p + '_s']:.2f}x" for p in paths[1:]) + " |")
    print(f"\nattention alone (fwd+bwd, {cfg.num_heads} heads): nested jagged {kern['nested_s']}, "
          f"one masked SDPA over the rows {kern['masked_rows_s']:.4f} s; machine {machine}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": rows, "attention_kernel": kern}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
