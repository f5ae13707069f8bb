"""Fine-tuning benchmark: every method on one task, from a pretrained and from a randomly
initialised backbone.

Per (backbone, method): trainable parameters (% of the model), best validation score, wall time,
bytes stored per task. The pretrained backbone is made here, and cached: the offline demo corpus
-> pretrain-prepare -> a short `pretrain-launch` run of bert-mini (1 process); the random
backbone is the same shape, randomly initialised, written by the same exporter. The task is
`pretrain.finetune.demo_task` ("topic": which stdlib package a docstring sentence documents).

    python bench/finetune.py [--work /tmp/bench-finetune] [--model bert-mini] [--pretrain-steps 2000] [--epochs 3]
                             [--methods full,adapter,prefix,lora,bitfit,side,mask] [--repeats 1]

Prints a markdown table (medians over --repeats seeds) and the CPU/GPU features, and writes
results.json in --work. Numbers go to docs/benchmarks.md with the command.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METHODS = ("full", "adapter", "prefix", "lora", "bitfit", "side", "mask")


def run(cmd: list[str], **kw) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, **kw)


def pretrained_backbone(work: Path, steps: int, model: str, seq: int) -> tuple[Path, Path]:
    """(prepared data dir, pretrain run dir) — made once, reused while the step count matches."""
    corpus, data, runs = work / "corpus", work / "data", work / "runs"
    if not (data / "manifest.json").is_file():
        from pretrain.prepare.demo_corpus import write_demo_corpus

        write_demo_corpus(str(corpus), max_bytes=8_000_000)
        run([sys.executable, "-m", "launch.prepare", f"input={corpus}/*", f"output={data}", "tokenizer.vocab_size=8000",
             "validation_fraction=0.02", "progress=false"])
    run_dir = runs / f"{model}-{steps}-{seq}"
    if not (run_dir / "export" / "config.json").is_file():
        from parallel.device import compute_device
        from parallel.precision import resolve_precision

        dtype = resolve_precision("auto", compute_device()).dtype  # what precision=auto picks, detected here
        run([sys.executable, "-m", "launch.train", f"run.root={runs}", f"run.name={run_dir.name}", f"data.path={data}",
             f"model={model}", f"data.max_seq_len={seq}", "data.micro_batch_size=32", f"trainer.max_steps={steps}",
             "trainer.eval_every=0", f"trainer.checkpoint_every={steps}", "trainer.log_every=50", "tracker=none",
             "optim.lr=1e-3", "schedule.warmup_steps=100", f"precision={dtype}", "trainer.progress=false"],
            env=dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu")))
    return data, run_dir


def random_backbone(work: Path, pretrained_export: Path) -> Path:
    """The pretrained export's shape (its config.json), random weights, the same tokenizer."""
    out = work / f"random-{pretrained_export.parent.name}"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoConfig

    from pretrain.hf.convert import from_hf_config
    from pretrain.hf.export import export_hf
    from pretrain.model import build_model

    torch.manual_seed(0)
    cfg = from_hf_config(AutoConfig.from_pretrained(str(pretrained_export)))
    export_hf(build_model(cfg), cfg, pretrained_export / "tokenizer.json", out)
    return out


def finetune(work: Path, backbone: Path, method: str, task: dict, seed: int, epochs: int, name: str, seq: int) -> dict:
    cmd = [sys.executable, "-m", "launch.finetune", f"model={backbone}", f"run.root={work / 'ft'}", f"run.name={name}",
           "run.fresh=true", f"run.seed={seed}", f"task.train={task['train']}", f"task.validation={task['validation']}",
           f"method={method}", f"trainer.max_epochs={epochs}", "trainer.batch_size=32", f"trainer.max_seq_len={seq}",
           "trainer.progress=false", "tracker=none", "precision=fp32"]
    t0 = time.perf_counter()
    run(cmd, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    summary = json.loads((work / "ft" / name / "summary.json").read_text())
    return {"score": summary[f"best/{summary['primary_metric'].replace('/', '_')}"], "trainable": summary["trainable_params"],
            "fraction": summary["trainable_fraction"], "task_bytes": summary["task_bytes"], "wall_s": wall,
            "train_wall_s": summary["wall_s"]}


def device_line() -> str:
    import torch

    from parallel.device import compute_device, describe

    return f"torch {torch.__version__}; cpu capability {torch.backends.cpu.get_cpu_capability()}; {describe(compute_device())}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/bench-finetune")
    p.add_argument("--pretrain-steps", type=int, default=2000)
    p.add_argument("--model", default="bert-mini", help="pretraining preset (conf/model/) of both backbones")
    p.add_argument("--pretrain-seq", type=int, default=128)
    p.add_argument("--seq", type=int, default=64, help="fine-tuning trainer.max_seq_len")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--repeats", type=int, default=1, help="seeds per (backbone, method); medians reported")
    p.add_argument("--train", type=int, default=900)
    p.add_argument("--validation", type=int, default=300)
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    _, run_dir = pretrained_backbone(work, a.pretrain_steps, a.model, a.pretrain_seq)
    backbones = {"pretrained": run_dir / "export", "random": random_backbone(work, run_dir / "export")}
    from pretrain.finetune.demo_task import write_task

    task = write_task(work / "task", "topic", "tsv", a.train, a.validation, seed=0)
    results = []
    for bname, backbone in backbones.items():
        for method in a.methods.split(","):
            reps = [finetune(work, backbone, method, task, seed, a.epochs, f"{bname}-{method}-s{seed}", a.seq)
                    for seed in range(a.repeats)]
            row = {"backbone": bname, "method": method, **{k: statistics.median(r[k] for r in reps) for k in reps[0]}}
            results.append(row)
            print(json.dumps(row), flush=True)
    (work / "results.json").write_text(json.dumps({"device": device_line(), "args": vars(a), "results": results}, indent=2))
    print(f"\n{device_line()}\n")
    print("| method | trainable params | % of model | accuracy (pretrained) | accuracy (random init) | gap | wall s (pretrained) | bytes per task |")
    print("|---|---|---|---|---|---|---|---|")
    by = {(r["backbone"], r["method"]): r for r in results}
    for method in a.methods.split(","):
        pre, rnd = by[("pretrained", method)], by[("random", method)]
        print(f"| {method} | {int(pre['trainable']):,} | {100 * pre['fraction']:.2f} | {pre['score']:.3f} | {rnd['score']:.3f} | "
              f"{pre['score'] - rnd['score']:+.3f} | {pre['wall_s']:.0f} | {int(pre['task_bytes']):,} |")


if __name__ == "__main__":
    main()
