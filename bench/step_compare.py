"""One training step of transformers' model vs our PretrainingModel at the same shape, in the same
process, on the device this runs on (bench/gpu_check.sh calls it next to the real pretrain-launch
runs): BertForPreTraining for bert presets (MLM + NSP), ModernBertForMaskedLM for modernbert
presets (MLM; both with transformers' default attention there, SDPA).

Both: weights fp32, forward/backward under bf16 autocast, torch AdamW (fused on CUDA), 15% MLM
labels (+ a sentence label for BERT), full-length sequences (no padding); one implementation after the
other, so each one's peak memory is its own (median step after warm-up: clocks settle). Prints one JSON line per implementation: step seconds (median),
tokens/s (batch x seq / step), MFU = model FLOPs (pretrain/model/flops.py, the same count for
both) / step / peak, peak memory (CUDA: max_memory_allocated).

usage: python bench/step_compare.py --preset bert-base --seq 128 --batch 128 --vocab 30522 --steps 20
       python bench/step_compare.py --preset modernbert-base --seq 512 --batch 32
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))


def model_config(preset: str, vocab: int):
    from omegaconf import OmegaConf

    import conf
    from pretrain.model import ModelConfig

    fields = OmegaConf.to_container(OmegaConf.load(os.path.join(os.path.dirname(conf.__file__), "model", f"{preset}.yaml")))
    fields.update(vocab_size=vocab, hidden_dropout=0.0, attention_dropout=0.0,
                  sentence_head="none" if fields.get("arch") == "modernbert" else "nsp")
    return ModelConfig(**fields)


def batch(cfg, size: int, seq: int, device: torch.device, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, cfg.vocab_size, (size, seq), generator=gen)
    labels = torch.where(torch.rand(size, seq, generator=gen) < 0.15, ids, torch.full_like(ids, -100))
    out = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids),
           "labels": labels, "next_sentence_label": torch.randint(0, 2, (size,), generator=gen)}
    return {k: v.to(device) for k, v in out.items()}


def make_step(name: str, cfg, data: dict, device: torch.device):
    """A closure doing one training step of implementation `name` (its model and optimizer live in it)."""
    from transformers import BertForPreTraining, ModernBertForMaskedLM

    from pretrain.hf.convert import to_hf_config
    from pretrain.model import build_model

    fused = {"fused": True} if device.type == "cuda" else {"foreach": False}
    torch.manual_seed(0)
    ce = torch.nn.functional.cross_entropy
    if name == "transformers":
        hf_config = to_hf_config(cfg)
        hf_config._attn_implementation = "sdpa"
        hf_class = ModernBertForMaskedLM if cfg.arch == "modernbert" else BertForPreTraining
        model = hf_class(hf_config).to(device)
        if cfg.arch == "modernbert":
            data = {k: data[k] for k in ("input_ids", "attention_mask", "labels")}
    else:
        model = build_model(cfg).to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if name == "transformers":
                loss = model(**data).loss
            else:
                out = model(data["input_ids"], data["token_type_ids"], data["attention_mask"], data["labels"])
                loss = ce(out.mlm_logits.float(), out.mlm_labels, ignore_index=-100)
                if out.sentence_logits is not None:
                    loss = loss + ce(out.sentence_logits.float(), data["next_sentence_label"])
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="bert-base")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak", type=float, default=None, help="FLOP/s for MFU (default: pretrain.train.throughput's bf16 peak)")
    args = p.parse_args(argv)

    from parallel.device import compute_device, describe
    from pretrain.model import flops_per_sequence
    from pretrain.train.throughput import peak_flops_per_device

    device = compute_device()
    cfg = model_config(args.preset, args.vocab)
    data = batch(cfg, args.batch, args.seq, device)
    peak = peak_flops_per_device("bf16", args.peak, device)
    masked = int((data["labels"] != -100).sum())
    flops = args.batch * flops_per_sequence(cfg, args.seq, 0) + masked * (
        flops_per_sequence(cfg, args.seq, 1) - flops_per_sequence(cfg, args.seq, 0))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for name in ("transformers", "ours"):  # one at a time: each one's peak memory is its own
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        step = make_step(name, cfg, data, device)
        times = []
        for i in range(args.warmup + args.steps):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
        memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        del step
        print(json.dumps({
            "impl": name, "preset": args.preset, "seq": args.seq, "batch": args.batch, "precision": "bf16 autocast",
            "step_s": seconds, "tokens_per_s": args.batch * args.seq / seconds, "mfu": flops / seconds / peak.flops,
            "peak": peak.line(), "device": describe(device), "steps": len(times), "peak_mem_gb": memory,
        }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
