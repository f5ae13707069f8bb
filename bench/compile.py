"""trainer.compile=true vs false: steady tokens/s and the compile cost, through the real CLI.

    .venv/bin/python bench/compile.py --data data/demo/shards   # 2 repeats, ~11 min on 2 cores
    .venv/bin/python bench/compile.py --presets modernbert-mini --steps 60 --reps 1

For each preset and each setting, `pretrain-launch` (2 ranks, ZeRO-2, precision=auto, the recipe
that preset is trained with, packed rows) runs `--steps` steps logging every `--every`; the
steady rate is the median of the per-interval tokens/s after the first `--skip` steps (the
compiles happen in those); the wall time of the whole launch shows what the compiles cost.
Runs are interleaved (eager, compiled, then compiled, eager ...) because the machine is shared.
Prints a markdown table with the CPU capability / GPU and precision.
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

from recipe import device_line, env, prepared  # noqa: E402

RECIPE = {"modernbert": "modern", "bert": "classic", "albert": "classic"}


def one_run(preset: str, compiled: bool, data: Path, work: Path, a, rep: int) -> dict:
    name = f"{preset}-{'compiled' if compiled else 'eager'}-{rep}"
    root = work / "runs"
    cmd = [sys.executable, "-m", "launch.train", f"run.root={root}", f"run.name={name}", "run.fresh=true",
           f"model={preset}", f"recipe={RECIPE[preset.split('-')[0]]}", f"data.path={data}",
           f"data.max_seq_len={a.seq}", f"data.micro_batch_size={a.batch // 2}", "data.packing=true",
           "cluster.nproc=2", "parallel=zero2", "precision=auto", f"trainer.max_steps={a.steps}",
           "trainer.eval_every=0", "trainer.checkpoint_every=1000000", f"trainer.log_every={a.every}",
           "trainer.progress=false", "trainer.export_on_finish=false", "tracker=none",
           f"trainer.compile={str(compiled).lower()}"]
    print("+ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env=env(), stdout=subprocess.DEVNULL)
    rows = [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in rows if "train/tokens_per_s" in r]
    steady = [r["train/tokens_per_s"] for r in train if r["step"] > a.skip]
    return {"tokens_per_s": statistics.median(steady), "wall_s": time.perf_counter() - t0,
            "final_loss": train[-1]["train/loss"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/bench-compile")
    p.add_argument("--data", default=None, help="a prepared directory (default: the demo corpus, prepared here)")
    p.add_argument("--presets", nargs="+", default=["modernbert-mini", "bert-mini"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--skip", type=int, default=20, help="steps left out of the steady rate (compiles)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=32, help="global batch (2 ranks)")
    p.add_argument("--reps", type=int, default=2)
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data = prepared(work, a.data, None)
    results: dict = {}
    for rep in range(a.reps):
        for preset in a.presets:
            for compiled in ((False, True) if rep % 2 == 0 else (True, False)):
                key = (preset, compiled)
                results.setdefault(key, []).append(one_run(preset, compiled, data, work, a, rep))
    print()
    print(device_line(data, argparse.Namespace(seq=a.seq, batch=a.batch, seconds=f"{a.steps} steps,")))
    print(f"| preset | compile | tokens/s (median) | vs eager | launch wall s ({a.steps} steps) | loss at the end |")
    print("|---|---|---|---|---|---|")
    for preset in a.presets:
        base = statistics.median(r["tokens_per_s"] for r in results[(preset, False)])
        for compiled in (False, True):
            rs = results[(preset, compiled)]
            tps = statistics.median(r["tokens_per_s"] for r in rs)
            wall = statistics.median(r["wall_s"] for r in rs)
            loss = statistics.median(r["final_loss"] for r in rs)
            print(f"| {preset} | {str(compiled).lower()} | {tps:.0f} | {tps / base:.2f}x | "
                  f"{wall:.0f} | {loss:.4f} |")
    (work / "results.json").write_text(json.dumps({f"{k[0]}-{k[1]}": v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
