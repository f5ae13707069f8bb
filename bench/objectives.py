"""MLM vs ELECTRA at equal pretraining wall-clock, then fine-tuned (results: docs/benchmarks.md
"Objectives").

    .venv/bin/python bench/objectives.py                       # demo corpus, 300 s per run (~20 min, 2 cores)
    .venv/bin/python bench/objectives.py --seconds 150 --ft-epochs 2 --data DIR

Both runs: pretrain-launch with the same model (the discriminator for ELECTRA; --model, default
bert-mini), 2 ranks, ZeRO-2, precision=auto, packing, the same sequence length, global batch, lr
schedule placed by the time budget (recipe=classic's optimizer) and trainer.max_time=--seconds of
training; MLM = objective=mlm (15% masking), ELECTRA = objective=electra (15% [MASK], generator
1/4 of the hidden size, disc_weight 50). Each export (ELECTRA: the discriminator, transformers'
ElectraForPreTraining) is then fine-tuned with pretrain-finetune, full and LoRA, on the demo
"topic" task (which stdlib package a docstring sentence documents) and the "source" task
(language reference vs licence text). Reported: steps, real tokens/s, median step time (the
trainer's train/step_time after the first 5 logged steps), fine-tuned validation accuracy.
Prints a markdown table and the CPU capability and precision; writes results.json in --work.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from recipe import env, finetune, prepared, run  # noqa: E402  (same helpers as bench/recipe.py)

OBJECTIVES = {"mlm": ["objective=mlm"], "electra": ["objective=electra"]}
FT_METHODS = ("full", "lora")


def pretrain(name: str, data: Path, work: Path, a) -> dict:
    root = work / "runs"
    t0 = time.perf_counter()
    run([sys.executable, "-m", "launch.train", f"run.root={root}", f"run.name={name}", "run.fresh=true",
         f"model={a.model}", *OBJECTIVES[name], f"data.path={data}", f"data.max_seq_len={a.seq}",
         f"data.micro_batch_size={a.batch // 2}", "cluster.nproc=2", "parallel=zero2", "precision=auto",
         "trainer.max_steps=null", f"trainer.max_time={a.seconds}", "trainer.eval_every=0",
         "trainer.checkpoint_every=1000000", "trainer.log_every=1", "trainer.progress=false", "tracker=none",
         f"optim.lr={a.lr}", "schedule.warmup_steps=0", "schedule.warmup_fraction=0.06",
         f"run.seed={a.seed}", f"data.seed={a.seed}"], env=env(), stdout=subprocess.DEVNULL)
    rows = [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in rows if "train/tokens_per_s" in r]
    last = train[-1]
    steady = [r["train/step_time"] for r in train[5:] if r.get("train/step_time")] or \
             [r["train/step_time"] for r in train if r.get("train/step_time")]
    return {"model_dir": str(root / name / "export"), "steps": last["step"],
            "tokens_per_s": last["train/consumed_tokens"] / last["train/seconds"],
            "step_s": statistics.median(steady), "wall_s": time.perf_counter() - t0,
            "last": {k: v for k, v in last.items() if k.startswith("train/") and ("acc" in k or "loss" in k)}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/bench-objectives")
    p.add_argument("--data", default=None, help="a prepared directory (default: the demo corpus, prepared here)")
    p.add_argument("--text", default=None)
    p.add_argument("--model", default="bert-mini")
    p.add_argument("--seconds", type=int, default=300, help="training wall-clock per pretraining run")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=64, help="global batch (2 ranks x batch/2)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--ft-epochs", type=int, default=2)
    p.add_argument("--tasks", default="topic,source")
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data = prepared(work, a.data, a.text)
    results = {name: pretrain(name, data, work, a) for name in OBJECTIVES}
    for name, r in results.items():
        print(json.dumps({name: r}), flush=True)
    from pretrain.finetune.demo_task import write_task

    sizes = {"topic": dict(train=900, validation=300),   # as bench/recipe.py and bench/finetune.py
             "source": dict(train=320, validation=160, sources=("reference", "license"))}   # as the tests
    tasks = {t: write_task(work / f"task-{t}", t, "tsv", seed=0, **sizes[t]) for t in a.tasks.split(",")}
    ft = argparse.Namespace(ft_epochs=a.ft_epochs)
    for name in results:
        for t, task in tasks.items():
            for method in FT_METHODS:
                score = finetune(results[name]["model_dir"], f"{name}-{t}", method, task, work, ft)
                results[name][f"{t}_{method}"] = score
                print(json.dumps({name: {f"{t}_{method}": score}}), flush=True)
    import torch

    from parallel.device import compute_device, describe
    from parallel.precision import resolve_precision

    line = (f"torch {torch.__version__}; cpu capability {torch.backends.cpu.get_cpu_capability()}; "
            f"{describe(compute_device())}; precision=auto -> {resolve_precision('auto').dtype}; model {a.model}; "
            f"seq {a.seq}, global batch {a.batch}, {a.seconds} s per run; fine-tuning {a.ft_epochs} epochs")
    (work / "results.json").write_text(json.dumps({"device": line, "args": vars(a), "results": results}, indent=2))
    print(f"\n{line}\n")
    cols = [f"{t} {m}" for t in tasks for m in FT_METHODS]
    print("| objective | steps | real tokens/s | step s | " + " | ".join(cols) + " |")
    print("|---|---|---|---|" + "---|" * len(cols))
    for name, r in results.items():
        scores = [r[f"{t}_{m}"] for t in tasks for m in FT_METHODS]
        print(f"| {name} | {r['steps']} | {r['tokens_per_s']:,.0f} | {r['step_s']:.3f} | "
              + " | ".join(f"{s:.3f}" if isinstance(s, float) else str(s) for s in scores) + " |")
    print(f"\nELECTRA step time / MLM: {results['electra']['step_s'] / results['mlm']['step_s']:.2f}x")


if __name__ == "__main__":
    main()
