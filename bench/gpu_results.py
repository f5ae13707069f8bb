"""Collect what bench/gpu_check.sh measured into $OUT/gpu_check.json and $OUT/gpu_check.md.

pretrain-launch runs: medians over the logged intervals (every 10 steps) after the first 10 steps
of the run (CUDA warm-up, allocator growth); `tokens_per_s` counts non-padding tokens (what the
trainer logs), `positions_per_s` = samples/s x seq (what the GPU computes, padding included);
MFU is the trainer's (model FLOPs / peak of the precision in use: the spec table for a known GPU).
step_compare: one JSON line per implementation (bench/step_compare.py); attention: the rows of
bench/attention.py (step time of each attention path, one-example and packed rows).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics


def run_summary(run_dir: str, seq: int, micro: int, skip: int = 10) -> dict:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return {"error": f"no {path}"}
    records = [json.loads(line) for line in open(path) if line.strip().endswith("}")]
    train = [r for r in records if "train/tokens_per_s" in r and r["step"] > skip] or \
            [r for r in records if "train/tokens_per_s" in r]
    if not train:
        return {"error": "no train records"}

    def med(key):
        values = [r[key] for r in train if r.get(key) is not None]
        return statistics.median(values) if values else None

    evals = [r for r in records if "eval/mlm_acc" in r]
    config = os.path.join(run_dir, "config.yaml")
    precision = re.search(r"^precision:\n(?:  .*\n)*?  dtype: (\S+)", open(config).read(), re.M) if os.path.isfile(config) else None
    return {
        "seq": seq, "micro_batch": micro, "steps": max(r["step"] for r in records), "intervals": len(train),
        "precision": precision.group(1) if precision else None,
        "tokens_per_s": med("train/tokens_per_s"), "positions_per_s": (med("train/samples_per_s") or 0) * seq,
        "mfu": med("train/mfu"), "peak_mem_gb": max(r.get("train/peak_mem_gb") or 0 for r in train),
        "data_wait": med("train/data_wait"), "step_time": med("train/step_time"),
        "final_loss": train[-1].get("train/loss"), "eval_mlm_acc": evals[-1]["eval/mlm_acc"] if evals else None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", default="gpu")
    p.add_argument("--run", action="append", default=[], help="NAME:SEQ:MICRO of a run under WORK/runs")
    args = p.parse_args(argv)

    log = open(os.path.join(args.out, "gpu_check.log"), errors="replace").read()
    steps = list(csv.DictReader(open(os.path.join(args.out, "steps.tsv")), delimiter="\t"))
    result = {
        "mode": args.mode,
        "device": next(iter(re.findall(r"^device: (.*)$", log, re.M)), None),
        "precision_auto": next(iter(re.findall(r"^precision=auto: (.*)$", log, re.M)), None),
        "mfu_peak": next(iter(re.findall(r"^MFU peak \(bf16\): (.*)$", log, re.M)), None),
        "measured_matmul": next(iter(re.findall(r"^measured bf16 matmul: (.*)$", log, re.M)), None),
        "steps": steps,
        "resumed": bool(re.search(r"resumed from step \d+", log)),
        "killed": next(iter(re.findall(r"^kill -9 of .*$", log, re.M)), None),
        "fill_mask": re.findall(r"^.*\[MASK\].* -> .*$", log, re.M),
        "pytest": next(iter(re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped).*?)\s*=*$", log, re.M)), None),
        "runs": {}, "compare": [], "attention": None,
    }
    for spec in args.run:
        name, seq, micro = spec.split(":")
        result["runs"][name] = run_summary(os.path.join(args.work, "runs", name), int(seq), int(micro))
    for path in sorted(os.listdir(args.work)):
        if path.startswith("compare-") and path.endswith(".jsonl"):
            for line in open(os.path.join(args.work, path)):
                if line.startswith("{") and '"impl"' in line:
                    result["compare"].append(json.loads(line))
    attention = os.path.join(args.work, "attention.json")
    if os.path.isfile(attention):
        result["attention"] = json.load(open(attention))
    # MFU against the measured matmul as well as against the peak the trainer used (spec for a known GPU)
    peak = re.match(r"([\d.]+) TFLOP/s", result["mfu_peak"] or "")
    measured = re.match(r"([\d.]+) GFLOP/s", result["measured_matmul"] or "")
    scale = float(peak.group(1)) * 1e12 / (float(measured.group(1)) * 1e9) if peak and measured else None
    for r in [*result["runs"].values(), *result["compare"]]:
        if r.get("mfu") is not None and scale:
            r["mfu_vs_measured_matmul"] = r["mfu"] * scale
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(result, f, indent=2)

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [f"# gpu_check ({args.mode})", "", f"- device: {result['device']}",
             f"- precision=auto: {result['precision_auto']}", f"- MFU peak: {result['mfu_peak']}",
             f"- measured: {result['measured_matmul']}", f"- pytest -m cuda: {result['pytest']}",
             f"- kill -9: {result['killed']}; resumed: {result['resumed']}", "",
             "| pretrain-launch run | seq | micro batch | dtype | tokens/s (non-pad) | positions/s | MFU | MFU vs measured matmul | peak mem GB | data wait | eval mlm_acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["runs"].items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} |")
            continue
        lines.append(f"| {name} (ZeRO-2, 1 rank) | {r['seq']} | {r['micro_batch']} | {r['precision']} | "
                     f"{fmt(r['tokens_per_s'], ',.0f')} | {fmt(r['positions_per_s'], ',.0f')} | {fmt(r['mfu'], '.1%')} | "
                     f"{fmt(r.get('mfu_vs_measured_matmul'), '.1%')} | "
                     f"{fmt(r['peak_mem_gb'], '.1f')} | {fmt(r['data_wait'], '.1%')} | {fmt(r['eval_mlm_acc'], '.3f')} |")
    lines += ["", "| plain torch, bf16 autocast | model | seq | batch | step s | tokens/s | MFU | MFU vs measured matmul | peak mem GB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in result["compare"]:
        lines.append(f"| {c['impl']} | {c['preset']} | {c['seq']} | {c['batch']} | {c['step_s']:.4f} | {c['tokens_per_s']:,.0f} | "
                     f"{c['mfu']:.1%} | {fmt(c.get('mfu_vs_measured_matmul'), '.1%')} | {fmt(c['peak_mem_gb'], '.1f')} |")
    if result["attention"]:
        att = result["attention"]
        paths = [k[:-2] for k in att["rows"][0] if k.endswith("_s") and not k.endswith("_per_s")] if att["rows"] else []
        lines += ["", f"Attention paths, our model, plain torch step ({att['machine'].get('dtype')}; bench/attention.py):", "",
                  "| model | rows | fill | " + " | ".join(f"{p} step s" for p in paths) + " | "
                  + " | ".join(f"{p} vs {paths[0]}" for p in paths[1:]) + " |",
                  "|---|---|---|" + "---|" * (2 * len(paths) - 1)]
        for r in att["rows"]:
            lines.append(f"| {r['model']} | {r['rows']} | {r['fill']:.2f} | " + " | ".join(f"{r[p + '_s']:.4f}" for p in paths)
                         + " | " + " | ".join(f"{r[paths[0] + '_s'] / r[p + '_s']:.2f}x" for p in paths[1:]) + " |")
    lines += ["", "fill-mask (exported model):", *[f"    {x}" for x in result["fill_mask"]], "",
              "| step | rc | seconds |", "|---|---|---|", *[f"| {s['step']} | {s['rc']} | {s['seconds']} |" for s in steps]]
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
