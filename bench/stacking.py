"""Progressive stacking: the new layers' optimizer state copied from their source layers (what the
trainer does) vs started fresh with their own step count, at equal steps, held-out masked-LM
accuracy at 15%.

    .venv/bin/python bench/stacking.py --data data/demo/shards --steps 240   # ~9 min on 2 cores

bert-mini (4 layers), stacking 2 -> 4 at a third of the steps, classic recipe, 1 rank,
parallel=single, fp32 (the layout where "fresh with its own step count" exists: the torch
optimizer's state is per parameter), repeats interleaved. The fresh variant is injected by
bench/stacking_fresh/sitecustomize.py.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from recipe import device_line  # noqa: E402


def one(name: str, fresh: bool, a, work: Path, seed: int) -> float:
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"))
    if fresh:
        env["STACKING_FRESH"] = "1"
        env["PYTHONPATH"] = f"{REPO / 'bench' / 'stacking_fresh'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    grow = a.steps // 3
    cmd = [sys.executable, "-m", "launch.train", f"run.root={work}", f"run.name={name}", "run.fresh=true",
           "model=bert-mini", "recipe=classic", "objective=mlm", "model.sentence_head=none", f"data.path={a.data}",
           "data.max_seq_len=128", "data.micro_batch_size=32", "cluster.nproc=1", "parallel=single",
           "precision=fp32", f"trainer.max_steps={a.steps}", f"trainer.eval_every={a.steps}",
           "trainer.eval_batches=20", "trainer.checkpoint_every=1000000", "trainer.log_every=20",
           "trainer.progress=false", "trainer.export_on_finish=false", "tracker=none", "optim.lr=5e-4",
           "trainer.stacking.layers=[2,4]", f"trainer.stacking.steps=[{grow}]", f"run.seed={seed}",
           f"data.seed={seed}"]
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    rows = [json.loads(x) for x in (work / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rows if "eval/mlm_acc" in r][-1]["eval/mlm_acc"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/demo/shards")
    p.add_argument("--work", default="/tmp/bench-stacking")
    p.add_argument("--steps", type=int, default=240)
    p.add_argument("--reps", type=int, default=2)
    a = p.parse_args(argv)
    work = Path(a.work)
    out: dict = {"copy": [], "fresh": []}
    for rep in range(a.reps):
        for variant in (("copy", "fresh") if rep % 2 == 0 else ("fresh", "copy")):
            out[variant].append(one(f"{variant}-{rep}", variant == "fresh", a, work, 1234 + rep))
    print()
    print(device_line(Path(a.data), argparse.Namespace(seq=128, batch=32, seconds=f"{a.steps} steps,")))
    print("| new layers' optimizer state | eval mlm_acc (15%), per seed | median |")
    print("|---|---|---|")
    for variant, accs in out.items():
        print(f"| {variant} | {', '.join(f'{x:.4f}' for x in accs)} | {statistics.median(accs):.4f} |")


if __name__ == "__main__":
    main()
