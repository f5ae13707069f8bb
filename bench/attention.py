"""Padded vs unpadded attention, one-example rows vs packed rows: training-step time of our model.

For each model (bert-mini, modernbert-mini; vocab 8192) and each batch kind (64 rows of `--seq`,
example lengths drawn from the demo corpus' distribution — one example per row, or packed
first-fit as pretrain.data packs them), times forward + backward + AdamW of the padded path
(model.unpad=false: every position computed, a mask) and the unpadded path (model.unpad=true:
the real tokens only, cu_seqlens; attention through SDPA on the re-padded rows on CPU, FlashAttention
varlen on CUDA when installed), interleaved, median of `--steps` after a warm-up. Also times the
attention kernel alone for the other candidate torch offers, nested (jagged) tensors, against one
masked SDPA call over the rows. Prints JSON lines and a Markdown table; one thread per process
by default (as each of 2 ranks on 2 cores gets).

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


def model_cfg(preset: str, unpad: bool):
    from omegaconf import OmegaConf

    import conf
    from pretrain.model import ModelConfig

    raw = OmegaConf.load(os.path.join(os.path.dirname(conf.__file__), "model", f"{preset}.yaml"))
    fields = dict(OmegaConf.to_container(raw), vocab_size=8192, hidden_dropout=0.0, attention_dropout=0.0,
                  sentence_head="none", unpad=unpad)
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


def time_steps(model, batch, steps: int) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    kw = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
    out = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        o = model(batch["input_ids"], None, batch["attention_mask"], batch["labels"], **kw)
        torch.nn.functional.cross_entropy(o.mlm_logits, o.mlm_labels).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(time.perf_counter() - t0)
    return out[1:]


def kernel_times(lengths, heads: int, head_dim: int, seq: int, steps: int) -> dict:
    """Attention forward+backward alone: nested jagged SDPA over the examples vs one masked SDPA
    over the packed rows."""
    import torch.nn.functional as F

    lengths = [int(n) for n in lengths]
    total = sum(lengths)
    q = torch.randn(total, heads, head_dim)
    rows = -(-total // seq) + 2
    x = torch.randn(rows, heads, seq, head_dim, requires_grad=True)
    mask = torch.ones(rows, 1, seq, seq, dtype=torch.bool)
    res = {}
    try:
        t = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            nt = torch.nested.nested_tensor(list(q.split(lengths)), layout=torch.jagged, requires_grad=True)
            nq = nt.transpose(1, 2)
            F.scaled_dot_product_attention(nq, nq, nq).values().sum().backward()
            t.append(time.perf_counter() - t0)
        res["nested_s"] = statistics.median(t[1:])
    except Exception as e:  # noqa: BLE001 - report what this torch build cannot do
        res["nested_s"] = f"failed: {type(e).__name__}"
    t = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        F.scaled_dot_product_attention(x, x, x, attn_mask=mask).sum().backward()
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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    if args.lengths:
        pool = np.load(args.lengths)
        lengths = rng.choice(pool, 4096)
    else:
        lengths = demo_lengths(args.seq, 4096, rng)
    machine = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
               "torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print(json.dumps({"machine": machine}))
    rows = []
    for preset in args.models.split(","):
        for packed in (False, True):
            batch = make_batch(lengths, args.rows, args.seq, packed, 8192, np.random.default_rng(1))
            real = int(batch["attention_mask"].sum())
            fill = real / batch["input_ids"].numel()
            times = {}
            torch.manual_seed(0)
            models = {u: __import__("pretrain.model", fromlist=["build_model"]).build_model(model_cfg(preset, u))
                      for u in (False, True)}
            models[True].load_state_dict(models[False].state_dict())
            samples = {False: [], True: []}
            for _ in range(2):  # interleave the two paths
                for u in (False, True):
                    samples[u] += time_steps(models[u], batch, max(1, args.steps // 2))
            for u in (False, True):
                times[u] = statistics.median(samples[u])
            row = {"model": preset, "rows": "packed" if packed else "one example", "fill": round(fill, 3),
                   "padded_s": round(times[False], 4), "unpadded_s": round(times[True], 4),
                   "unpadded_speedup": round(times[False] / times[True], 2),
                   "real_tokens_per_s_padded": round(real / times[False]),
                   "real_tokens_per_s_unpadded": round(real / times[True])}
            print(json.dumps(row), flush=True)
            rows.append(row)
    cfg = model_cfg("modernbert-mini", True)
    kern = kernel_times(lengths[:int(args.rows * args.seq * 0.95 / lengths.mean())], cfg.num_heads,
                        cfg.hidden_size // cfg.num_heads, args.seq, args.steps)
    print(json.dumps({"attention_kernel": kern}))
    print("\n| model | rows | fill | padded step s | unpadded step s | unpadded speed-up | real tokens/s (best) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        best = max(r["real_tokens_per_s_padded"], r["real_tokens_per_s_unpadded"])
        print(f"| {r['model']} | {r['rows']} | {r['fill']:.2f} | {r['padded_s']:.3f} | {r['unpadded_s']:.3f} | "
              f"{r['unpadded_speedup']:.2f}x | {best:,} |")
    print(f"\nattention alone (fwd+bwd, {cfg.num_heads} heads): nested jagged {kern['nested_s']}, "
          f"one masked SDPA over the rows {kern['masked_rows_s']:.4f} s; machine {machine}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
