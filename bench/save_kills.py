"""The long kill-during-save fuzz: kill -9 at many seeded moments of a save, for every layout.

    .venv/bin/python bench/save_kills.py                      # 4 layouts x 90 kills (~25 min on 2 cores)
    .venv/bin/python bench/save_kills.py --kills 30 --layouts zero3-fp32 --seeds 1,2

Runs tests/launch/save_kills.py (the driver `make test` runs once, 30 kills, ZeRO-2 bf16) per
(layout, seed) on a freshly prepared demo corpus, and prints one row per run: kill points, how
many distinct save events they hit, how many came after `latest` was published, failures, and
the median seconds per relaunch (fork server: a relaunch is a fork, not a new interpreter).
Exit code 1 when any run failed a check; the failing report's path is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "tests", "launch", "save_kills.py")
LAYOUTS = ("zero0-fp32", "zero1-bf16", "zero2-bf16", "zero3-fp32")


def prepare(out: str) -> str:
    sys.path.insert(0, ROOT)
    from pretrain.prepare.config import validate_config
    from pretrain.prepare.demo_corpus import write_demo_corpus
    from pretrain.prepare.pipeline import run

    corpus = os.path.join(out, "corpus")
    os.makedirs(corpus, exist_ok=True)
    write_demo_corpus(corpus, max_bytes=1_000_000)
    data = os.path.join(out, "data")
    run(validate_config({"input": [f"{corpus}/*"], "output": data, "validation_fraction": 0.05, "num_workers": 2,
                         "progress": False, "tokenizer": {"vocab_size": 2000}}), echo=lambda line: None)
    return data


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=90)
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--seeds", default="1")
    p.add_argument("--work", default=None, help="default: a temporary directory")
    args = p.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="save-kills-")
    data = prepare(work)
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), OMP_NUM_THREADS="1")
    from parallel.device import cpu_features

    features = ",".join(k for k, v in cpu_features().items() if v)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs ({features}); python {DRIVER} --kills {args.kills}")
    print("| layout | seed | kills | distinct events hit / per save | after publish | failures | s per relaunch (median) | total s |")
    print("|---|---|---|---|---|---|---|---|")
    failed = False
    for layout in args.layouts.split(","):
        for seed in args.seeds.split(","):
            run_dir = os.path.join(work, f"{layout}-{seed}")
            proc = subprocess.run([sys.executable, DRIVER, "--data", data, "--work", run_dir, "--kills", str(args.kills),
                                   "--seed", seed, "--layout", layout], env=env, cwd=ROOT, capture_output=True, text=True)
            path = os.path.join(run_dir, "report.json")
            if not os.path.exists(path):
                print(f"| {layout} | {seed} | driver crashed: {proc.stderr.strip().splitlines()[-1:]} |")
                failed = True
                continue
            r = json.load(open(path))
            kills = [a for a in r.get("attempts", []) if "killed_at" in a]
            relaunch = statistics.median(a["seconds"] for a in r["attempts"]) if r.get("attempts") else float("nan")
            print(f"| {layout} | {seed} | {len(kills)} | {r.get('positions_hit')} / {r.get('positions')} | "
                  f"{sum(a['published'] for a in kills)} | {len(r['failures'])} | {relaunch:.2f} | {r['seconds']:.0f} |")
            if r["failures"]:
                failed = True
                print(f"  failures in {path}: {r['failures'][0][:300]}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
