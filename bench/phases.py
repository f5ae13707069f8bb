"""Training phases and mixtures (results: docs/benchmarks.md "Phases and mixtures").

    .venv/bin/python bench/phases.py                  # ~9 min on 2 cores: 3 runs + the mixture count
    .venv/bin/python bench/phases.py --steps 400 --work /tmp/bench-phases   # longer runs (~25 min)

1. BERT's two phases at equal wall-clock: `two-phase` trains --steps steps, the first 90% at
   seq 128 (micro-batch 16) and the rest at seq 512 (micro-batch 4: the same tokens per step),
   as one run with trainer.phases; `all-128` and `all-512` train for the two-phase run's
   training seconds (trainer.max_time) at one length. bert-mini, recipe=modern (MLM only at
   30%, WSD, lr 1e-3: it learns within minutes), packed rows, 2 ranks ZeRO-2, on the demo corpus regrouped into long documents (bench/long_docs.py). Every
   run ends with the trainer's own evaluation at seq 512 (the run's data.max_seq_len; phases
   change training only) over the whole validation split: masked-LM accuracy at 15%.
2. A two-source mixture at 0.8 / 0.2 (the synthetic prepared directories: 240 and 16
   documents): the shares of batches and of tokens the loaders of 2 ranks x 2 workers hand out
   in 200 steps of 2 micro-batches each.
Prints a markdown table with the CPU capability; writes results.json in --work.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run(cmd: list[str], **kw) -> None:
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, **kw)


def env() -> dict:
    return dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"))


def long_docs(work: Path) -> Path:
    out = work / "data"
    if not (out / "manifest.json").is_file():
        run([sys.executable, "bench/long_docs.py", str(work / "long"), "--join", "24"])
        run([sys.executable, "-m", "launch.prepare", f"input={work / 'long'}/long-docs.jsonl", f"output={out}",
             "tokenizer.vocab_size=8192", "validation_fraction=0.03", "progress=false"])
    return out


SHORT = "data.max_seq_len:128,data.micro_batch_size:16"


def overrides(name: str, a, seconds: float | None) -> list[str]:
    common = ["model=bert-mini", "recipe=modern", "objective=mlm", "model.sentence_head=none", "data.max_seq_len=512",
              "data.micro_batch_size=4", "cluster.nproc=2", "parallel=zero2", "precision=auto",
              "trainer.eval_every=1000000", "trainer.eval_batches=null", "trainer.checkpoint_every=1000000",
              "trainer.log_every=5", "trainer.progress=false", "trainer.export_on_finish=false", "tracker=none",
              f"run.seed={a.seed}", f"data.seed={a.seed}"]
    if name == "two-phase":
        first = int(round(0.9 * a.steps))
        return [*common, f"trainer.max_steps={a.steps}",
                f"trainer.phases=[{{name:short,steps:{first},set:{{{SHORT}}}}},{{name:long}}]"]
    budget = ["trainer.max_steps=null", f"trainer.max_time={seconds:.1f}"]
    if name == "all-128":
        return [*common, *budget, f"trainer.phases=[{{name:short,set:{{{SHORT}}}}}]"]
    return [*common, *budget]


def train(name: str, data: Path, work: Path, a, seconds: float | None) -> dict:
    root = work / "runs"
    run([sys.executable, "-m", "launch.train", f"run.root={root}", f"run.name={name}", "run.fresh=true",
         f"data.path={data}", *overrides(name, a, seconds)], env=env(), stdout=subprocess.DEVNULL)
    rows = [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train_rows = [r for r in rows if "train/loss" in r]
    evals = [r for r in rows if "eval/mlm_acc" in r]
    last = train_rows[-1]
    return {"steps": last["step"], "train_seconds": last["train/seconds"], "tokens": last["train/consumed_tokens"],
            "tokens_per_s": last["train/consumed_tokens"] / last["train/seconds"],
            "mlm_acc_512": evals[-1]["eval/mlm_acc"], "eval_loss_512": evals[-1]["eval/loss"]}


def mixture_shares(work: Path, steps: int = 200) -> dict:
    """Batches and tokens per source that 2 ranks x 2 workers hand out in `steps` steps of 2 micro-batches."""
    from collections import Counter

    from pretrain.data import build_train_loader
    from pretrain.data.config import DataConfig, ObjectiveConfig, SourceConfig
    from pretrain.data.synthetic import write_prepared

    big = write_prepared(str(work / "mix-big"), {"train": 6, "valid": 1}, docs_per_shard=40)
    small = write_prepared(str(work / "mix-small"), {"train": 1, "valid": 1}, docs_per_shard=16)
    data = DataConfig(sources=[SourceConfig(name="big", path=big, weight=0.8),
                               SourceConfig(name="small", path=small, weight=0.2)],
                      max_seq_len=128, micro_batch_size=8, num_workers=2)
    stats = Counter()
    for rank in (0, 1):
        loader = build_train_loader(data, ObjectiveConfig(sentence_task="none"), rank, 2)
        it = iter(loader)
        for _ in range(2 * steps):
            next(it)
        stats.update(loader.stats)
    out = {}
    for unit in ("batches", "tokens", "samples"):
        total = stats[f"source/big/{unit}"] + stats[f"source/small/{unit}"]
        out[unit] = {n: stats[f"source/{n}/{unit}"] / total for n in ("big", "small")}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/bench-phases")
    p.add_argument("--steps", type=int, default=120, help="steps of the two-phase run (90%% at 128)")
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    import torch

    data = long_docs(work)
    results = {"cpu": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__, "steps": a.steps}
    t0 = time.perf_counter()
    results["two-phase"] = train("two-phase", data, work, a, None)
    seconds = results["two-phase"]["train_seconds"]
    for name in ("all-128", "all-512"):
        results[name] = train(name, data, work, a, seconds)
    results["mixture"] = mixture_shares(work)
    results["wall_s"] = time.perf_counter() - t0
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\ncpu capability {results['cpu']}, torch {results['torch']}; bert-mini, recipe=modern, 2 ranks ZeRO-2, "
          f"{seconds:.0f} s of training per run; eval at seq 512 on the validation split\n")
    print("| run | steps | tokens/s | eval/mlm_acc @512 | eval/loss @512 |")
    print("|---|---|---|---|---|")
    for name in ("two-phase", "all-128", "all-512"):
        r = results[name]
        print(f"| {name} | {r['steps']} | {r['tokens_per_s']:,.0f} | {r['mlm_acc_512']:.3f} | {r['eval_loss_512']:.3f} |")
    m = results["mixture"]
    print(f"\nmixture 0.8/0.2 after 200 steps (2 ranks x 2 micro-batches): batches {m['batches']['big']:.3f} / "
          f"{m['batches']['small']:.3f}, tokens {m['tokens']['big']:.3f} / {m['tokens']['small']:.3f}, "
          f"samples {m['samples']['big']:.3f} / {m['samples']['small']:.3f}")


if __name__ == "__main__":
    main()
