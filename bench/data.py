"""Data benchmarks. One function per measurement; `main()` runs them all and prints a table.

Prepare part: throughput of `pretrain-prepare` in MB of raw (uncompressed) text per second per
core on the offline demo corpus (median of 3 runs, tokenizer reused so only the streaming
split/tokenize/shard path is timed; tokenizer training timed separately), and peak RSS at 1x and
4x the corpus. Run: `.venv/bin/python bench/data.py` (the loader part is added by its owner).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def _raw_text_bytes(paths: list[str]) -> int:
    import gzip

    total = 0
    for p in paths:
        opener = gzip.open if p.endswith(".gz") else open
        with opener(p, "rb") as f:
            total += len(f.read())
    return total


def _demo(workdir: str, copies: int = 1) -> list[str]:
    from pretrain.prepare.demo_corpus import write_demo_corpus

    return write_demo_corpus(os.path.join(workdir, f"corpus-x{copies}"), copies=copies)


def _cfg(inputs, output, **kw):
    from pretrain.prepare.config import validate_config

    raw = {"input": inputs, "output": output, "overwrite": True, "progress": False,
           "validation_fraction": 0.01, "tokenizer": {"vocab_size": 8000}}
    raw.update(kw)
    return validate_config(raw)


def bench_tokenizer_training(workdir: str) -> dict:
    """Seconds to train the WordPiece tokenizer on the demo corpus (vocab 8000)."""
    from pretrain.prepare.config import TokenizerConfig
    from pretrain.prepare.pipeline import _training_texts
    from pretrain.prepare.tokenizer import train_tokenizer
    from pretrain.prepare.readers import expand_inputs

    paths = _demo(workdir)
    cfg = _cfg(paths, os.path.join(workdir, "unused"))
    t = time.perf_counter()
    tok = train_tokenizer(_training_texts(cfg, expand_inputs(paths, cfg.format)), TokenizerConfig(vocab_size=8000))
    dt = time.perf_counter() - t
    path = os.path.join(workdir, "tokenizer.json")
    tok.save(path)
    mb = _raw_text_bytes(paths) / 1e6
    return {"name": "prepare: tokenizer training (vocab 8000)", "value": f"{dt:.2f} s ({mb / dt:.2f} MB/s)"}


def bench_prepare_throughput(workdir: str, runs: int = 3) -> dict:
    """Median MB/s of raw text through split+tokenize+shard, divided by the worker count."""
    from pretrain.prepare.pipeline import run

    paths = _demo(workdir)
    tok = os.path.join(workdir, "tokenizer.json")
    workers = os.cpu_count() or 1
    mb = _raw_text_bytes(paths) / 1e6
    times, cpu = [], []
    for i in range(runs):
        cfg = _cfg(paths, os.path.join(workdir, "out"), num_workers=workers, tokenizer={"path": tok})
        c0 = _cpu_seconds()
        t = time.perf_counter()
        run(cfg, echo=lambda line: None)
        times.append(time.perf_counter() - t)
        cpu.append(_cpu_seconds() - c0)
    med = statistics.median(times)
    # CPU seconds (this process + reaped workers) per MB: the per-core rate, robust to a busy machine.
    return {"name": f"prepare: throughput ({mb:.1f} MB text, {workers} workers, median of {runs})",
            "value": f"{mb / med:.2f} MB/s wall, {mb / med / workers:.2f} MB/s per core (wall), "
                     f"{mb / statistics.median(cpu):.2f} MB per CPU-second"}


def _cpu_seconds() -> float:
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


_RSS_SCRIPT = """
import json, resource, sys
from pretrain.prepare.config import validate_config
from pretrain.prepare.pipeline import run
inputs, out, tok = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
run(validate_config({"input": inputs, "output": out, "overwrite": True, "progress": False,
                     "tokenizer": {"path": tok}, "shard_size_bytes": 1 << 20}), echo=lambda l: None)
print(json.dumps({"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def bench_prepare_peak_rss(workdir: str, copies: int) -> dict:
    """Peak RSS (main process; largest worker) preparing `copies` x the demo corpus."""
    paths = _demo(workdir, copies)
    tok = os.path.join(workdir, "tokenizer.json")
    r = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, ",".join(paths), os.path.join(workdir, f"rss{copies}"), tok],
                       env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, check=True)
    rss = json.loads(r.stdout.strip().splitlines()[-1])
    mb = _raw_text_bytes(paths) / 1e6
    return {"name": f"prepare: peak RSS at {copies}x ({mb:.1f} MB text)",
            "value": f"main {rss['self'] / 1024:.0f} MB, largest worker {rss['children'] / 1024:.0f} MB"}


def prepare_benchmarks() -> list[dict]:
    with tempfile.TemporaryDirectory() as workdir:
        return [
            bench_tokenizer_training(workdir),
            bench_prepare_throughput(workdir),
            bench_prepare_peak_rss(workdir, 1),
            bench_prepare_peak_rss(workdir, 4),
        ]


def main() -> None:
    rows = prepare_benchmarks()
    width = max(len(r["name"]) for r in rows)
    print(f"{'measurement':<{width}}  result")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['value']}")


if __name__ == "__main__":
    main()
