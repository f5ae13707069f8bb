"""A two-source mixture end to end: shares, per-source metrics and evaluation, kill -9 + resume
exact (losses and per-source counts), then 2 -> 1 ranks with every example at most once."""
from __future__ import annotations

import json
import os

import pytest

from launch_helpers import kill_tree, latest, launch, losses, metrics, start, wait_for


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> str:
    from pretrain.data.synthetic import write_prepared

    root = tmp_path_factory.mktemp("mixture")
    big = write_prepared(str(root / "big"), {"train": 4, "valid": 1}, docs_per_shard=40)
    small = write_prepared(str(root / "small"), {"train": 1, "valid": 1}, docs_per_shard=16)
    return f"data.sources=[{{name:big,path:{big},weight:0.8}},{{name:small,path:{small},weight:0.2}}]"


MIX = ["cluster.nproc=2", "parallel=zero1", "trainer.grad_accum=2", "trainer.checkpoint_every=4",
       "trainer.max_steps=12", "trainer.eval_every=6", "trainer.eval_batches=2", "trainer.record_samples=true",
]


def test_mixture_resumes_exactly_and_counts_per_source(tmp_path, sources):
    root = str(tmp_path / "runs")
    ref = launch(root, None, "ref", *MIX, sources)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "mixture of 2 sources, weights big 0.800, small 0.200" in ref.stdout
    assert "data: source small starts epoch" in ref.stdout   # 16 documents: read again early
    rows = metrics(os.path.join(root, "ref"))
    last = [m for m in rows if "train/loss" in m][-1]
    samples = {n: last[f"train/source/{n}/samples"] for n in ("big", "small")}
    assert samples["big"] > samples["small"] > 0
    assert last["train/source/big/samples"] + last["train/source/small/samples"] == last["train/consumed_samples"]
    assert last["train/source/big/tokens"] + last["train/source/small/tokens"] == last["train/consumed_tokens"]
    evals = [m for m in rows if "eval/mlm_acc" in m]
    assert evals and all(f"eval/{n}/mlm_acc" in evals[-1] for n in ("big", "small"))
    assert {key[0] for key in _examples(os.path.join(root, "ref"))} == {0, 1}

    crash_dir = os.path.join(root, "crash")
    proc = start(root, None, "crash", *MIX, sources)
    wait_for(lambda: latest(crash_dir) is not None, what="first checkpoint", proc=proc)
    kill_tree(proc)
    again = launch(root, None, "crash", *MIX, sources)
    assert again.returncode == 0, again.stderr[-3000:]
    assert losses(crash_dir) == losses(os.path.join(root, "ref"))
    end = [m for m in metrics(crash_dir) if "train/loss" in m][-1]
    assert {k: v for k, v in end.items() if k.startswith("train/source/")} == \
        {k: v for k, v in last.items() if k.startswith("train/source/")}

    # 2 -> 1 ranks: each source's examples are trained on at most once per epoch
    one = launch(root, None, "crash", *[o for o in MIX if not o.startswith(("cluster.nproc", "trainer.max_steps"))],
                 "cluster.nproc=1", "trainer.max_steps=20", sources)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "(2 -> 1 ranks)" in one.stdout
    seen = _examples(crash_dir)
    kept = [key for key in seen if key[0] == 0]   # the big source: still in its first epoch
    assert kept and len(kept) == len(set(kept))
    assert len(seen) == len(set(seen))


def _records(run_dir):
    out = []
    for rank in (0, 1):
        path = os.path.join(run_dir, "logs", f"samples-rank{rank}.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                out += [(rank, json.loads(line)) for line in f]
    return out


def _examples(run_dir) -> list:
    """(source, epoch, doc, example) of every example trained on, repeats kept; a crashed launch's
    steps after its last checkpoint are trained again, so only the latest record of a step counts."""
    by_step: dict = {}
    current = None
    for rank, (step, epoch, doc, example, source) in _records(run_dir):
        if (rank, step) != current:
            current = (rank, step)
            by_step[current] = []   # a step written again (after a crash) replaces the earlier lines
        by_step[current].append((source, epoch, doc, example))
    return [key for keys in by_step.values() for key in keys]


def test_mixture_and_masking_phases_under_pipeline_stages(tmp_path, sources):
    """Composes with the pipeline engine (2 stages): per-source counts, a phase that changes the
    masking and the source weights (the shapes the stages were built for stay)."""
    root = str(tmp_path / "runs")
    run = launch(root, None, "pipe", "cluster.nproc=2", "parallel=pipeline", "parallel.pipeline_stages=2",
                 "trainer.max_steps=6", "trainer.eval_every=6", "trainer.eval_batches=1", sources,
                 "trainer.phases=[{steps:3,set:{objective.mlm_probability:0.3}},{set:{data.source_weights:{big:1}}}]")
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [m for m in metrics(os.path.join(root, "pipe")) if "train/loss" in m]
    assert [m["train/phase"] for m in rows] == [1, 1, 1, 2, 2, 2]
    small = [m["train/source/small/samples"] for m in rows]
    assert small[2] == small[-1], "phase 2 reads only the big source"
    assert rows[-1]["train/source/big/samples"] + small[-1] == rows[-1]["train/consumed_samples"]
