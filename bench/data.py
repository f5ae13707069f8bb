"""Data benchmarks: `pretrain-prepare` and the training loader. `main()` runs them all, one table.

Prepare: throughput in MB of raw (uncompressed) text through split+tokenize+shard on the offline
demo corpus, tokenizer reused (training timed separately); median of 3 runs, each in a fresh
subprocess that times `run()` only, wall and CPU seconds (itself + its workers: the per-core rate,
robust to a busy machine). With ``--baseline ROOT`` (a directory holding an older `pretrain`
package, e.g. ``mkdir /tmp/old && git archive <rev> pretrain | tar -x -C /tmp/old``) the old code
is timed the same way, runs interleaved, and its output checked byte-identical. Peak RSS at 1x and 4x.
Loader: real tokens/s delivered into batches by `build_train_loader` with 0/1/2 workers (synthetic
prepared data unless a directory is given; clock starts after the first batch).

  .venv/bin/python bench/data.py [--baseline ROOT]          # everything
  .venv/bin/python bench/data.py --loader [prepared_dir]    # loader part only
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
    files = expand_inputs(paths, cfg.format)
    tok = train_tokenizer(lambda: _training_texts(cfg, files), TokenizerConfig(vocab_size=8000))
    dt = time.perf_counter() - t
    path = os.path.join(workdir, "tokenizer.json")
    tok.save(path)
    mb = _raw_text_bytes(paths) / 1e6
    return {"name": "prepare: tokenizer training (vocab 8000)", "value": f"{dt:.2f} s ({mb / dt:.2f} MB/s)"}


_RUN_SCRIPT = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from pretrain.prepare.config import validate_config
from pretrain.prepare.pipeline import run
def cpu():
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime
cfg = validate_config(json.loads(sys.argv[2]))
c, t = cpu(), time.perf_counter()
run(cfg, echo=lambda line: None)
print(json.dumps({"wall": time.perf_counter() - t, "cpu": cpu() - c}))
"""


def _timed_run(root: str, raw_cfg: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", _RUN_SCRIPT, root, json.dumps(raw_cfg)], cwd=tempfile.gettempdir(),
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _tree_bytes(root: str) -> dict:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n != "manifest.json":
                with open(os.path.join(dirpath, n), "rb") as f:
                    out[os.path.relpath(os.path.join(dirpath, n), root)] = f.read()
    return out


def bench_prepare_throughput(workdir: str, runs: int = 3, baseline: str | None = None) -> list[dict]:
    """Median MB/s of raw text through split+tokenize+shard (wall, per core, per CPU-second)."""
    paths = _demo(workdir)
    tok = os.path.join(workdir, "tokenizer.json")
    workers = os.cpu_count() or 1
    mb = _raw_text_bytes(paths) / 1e6
    roots = {"new": REPO} if baseline is None else {"new": REPO, "old": baseline}
    results: dict[str, list[dict]] = {k: [] for k in roots}
    for _ in range(runs):
        for name, root in roots.items():  # interleaved: both see the same machine load
            raw = {"input": paths, "output": os.path.join(workdir, f"out-{name}"), "overwrite": True,
                   "progress": False, "validation_fraction": 0.01, "num_workers": workers,
                   "tokenizer": {"path": tok}}
            results[name].append(_timed_run(root, raw))
    rows = []
    med = {}
    for name in roots:
        wall = statistics.median(r["wall"] for r in results[name])
        cpu = statistics.median(r["cpu"] for r in results[name])
        med[name] = (wall, cpu)
        label = "" if baseline is None else f" [{name} code]"
        rows.append({"name": f"prepare: throughput{label} ({mb:.1f} MB text, {workers} workers, median of {runs})",
                     "value": f"{mb / wall:.2f} MB/s wall, {mb / wall / workers:.2f} MB/s per core (wall), "
                              f"{mb / cpu:.2f} MB per CPU-second"})
    if baseline is not None:
        same = _tree_bytes(os.path.join(workdir, "out-new")) == _tree_bytes(os.path.join(workdir, "out-old"))
        rows.append({"name": "prepare: new vs old code",
                     "value": f"{med['old'][0] / med['new'][0]:.1f}x wall, {med['old'][1] / med['new'][1]:.1f}x CPU; "
                              f"shards + tokenizer {'byte-identical' if same else 'DIFFER'}"})
    return rows


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


def prepare_benchmarks(baseline: str | None = None) -> list[dict]:
    with tempfile.TemporaryDirectory() as workdir:
        return [
            bench_tokenizer_training(workdir),
            *bench_prepare_throughput(workdir, baseline=baseline),
            bench_prepare_peak_rss(workdir, 1),
            bench_prepare_peak_rss(workdir, 4),
        ]


def loader_throughput(prepared_dir: str, workers: int, batches: int = 300, max_seq_len: int = 128,
                      micro_batch_size: int = 32, masking: str = "token", sentence_task: str = "sop") -> float:
    """Real (non-pad) tokens per second yielded by one rank's training loader (steady state)."""
    import itertools

    from pretrain.data import build_train_loader
    from pretrain.data.config import DataConfig, ObjectiveConfig

    data = DataConfig(path=prepared_dir, max_seq_len=max_seq_len, micro_batch_size=micro_batch_size,
                      num_workers=workers)
    obj = ObjectiveConfig(masking=masking, sentence_task=sentence_task)
    it = iter(build_train_loader(data, obj, 0, 1))
    next(it)  # worker start-up excluded
    tokens, start = 0, time.perf_counter()
    for batch in itertools.islice(it, batches):
        tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - start)


def loader_benchmarks(prepared_dir: str | None = None) -> list[dict]:
    """Loader tokens/s for 0/1/2 workers x (token/sop, whole_word/sop, span/nsp); max_seq_len 128, batch 32."""
    with tempfile.TemporaryDirectory() as workdir:
        if prepared_dir is None:
            from pretrain.data.synthetic import write_prepared

            prepared_dir = write_prepared(os.path.join(workdir, "prepared"), {"train": 8, "valid": 1}, docs_per_shard=150)
        rows = []
        for masking, task in (("token", "sop"), ("whole_word", "sop"), ("span", "nsp")):
            for workers in (0, 1, 2):
                tps = loader_throughput(prepared_dir, workers, masking=masking, sentence_task=task)
                rows.append({"name": f"loader: {workers} workers, {masking} masking, {task} (tokens/s)",
                             "value": f"{tps:,.0f}"})
        return rows


def _print_table(rows: list[dict]) -> None:
    width = max(len(r["name"]) for r in rows)
    print(f"{'measurement':<{width}}  result")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['value']}", flush=True)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="directory holding an older `pretrain` package to time side by side")
    ap.add_argument("--loader", nargs="?", const="", metavar="PREPARED_DIR",
                    help="loader part only (synthetic data unless PREPARED_DIR)")
    args = ap.parse_args(argv)
    if args.loader is not None:
        _print_table(loader_benchmarks(args.loader or None))
        return
    _print_table(prepare_benchmarks(args.baseline) + loader_benchmarks())


if __name__ == "__main__":
    main()
