"""Crash, preemption and world-size changes: a resumed run continues exactly where it stopped."""
from __future__ import annotations

import json
import os
import signal

import pytest

from launch_helpers import kill_tree, latest, launch, losses, metrics, start, wait_for

RESUME = ["cluster.nproc=2", "parallel=zero2", "precision=bf16", "trainer.grad_accum=2",
          "trainer.checkpoint_every=4", "trainer.max_steps=16", "trainer.keep_checkpoints=3",
          "model.gradient_checkpointing=true"]


def test_kill9_then_relaunch_continues_bit_identically_and_truncated_checkpoint_falls_back(tmp_path, tiny_data):
    root = str(tmp_path / "runs")
    ref = launch(root, tiny_data, "ref", *RESUME)
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = losses(os.path.join(root, "ref"))
    assert sorted(reference) == list(range(1, 17))
    assert reference[16] < reference[1], "loss should fall"
    # packed rows (data.packing defaults to true): the resume below is exact through the packer
    assert all(m["train/fill"] > 0.9 for m in metrics(os.path.join(root, "ref")) if "train/loss" in m)

    crash_dir = os.path.join(root, "crash")
    proc = start(root, tiny_data, "crash", *RESUME)
    wait_for(lambda: latest(crash_dir) is not None, what="first checkpoint", proc=proc)
    kill_tree(proc)
    resumed_from = int(latest(crash_dir).split("_")[1])
    assert resumed_from < 16

    again = launch(root, tiny_data, "crash", *RESUME)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from step {resumed_from}" in again.stdout
    resumed = losses(crash_dir)
    assert resumed == reference, "losses after kill -9 and resume must equal the uninterrupted run exactly"
    steps = [m["step"] for m in metrics(crash_dir) if "train/loss" in m]
    assert steps == sorted(set(steps)), "metrics.jsonl steps must never repeat or go backwards"

    # Truncate the newest checkpoint: it is refused and the one before it is used.
    ckpt_root = os.path.join(root, "ref", "checkpoints")
    newest = os.path.join(ckpt_root, latest(os.path.join(root, "ref")))
    victim = max((os.path.join(d, f) for d, _, fs in os.walk(newest) for f in fs if f.endswith(".pt")),
                 key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    more = launch(root, tiny_data, "ref", *RESUME, "trainer.max_steps=18")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "truncated" in more.stdout and "step_000016" in more.stdout
    assert "resumed from step 12" in more.stdout


def test_sigterm_saves_then_exits_and_one_rank_resumes_with_exactly_once_data(tmp_path, tiny_data):
    root = str(tmp_path / "runs")
    run_dir = os.path.join(root, "pre")
    common = ["parallel=zero2", "trainer.checkpoint_every=1000", "trainer.record_samples=true"]
    proc = start(root, tiny_data, "pre", "cluster.nproc=2", "trainer.max_steps=100000", *common)
    wait_for(lambda: len(losses(run_dir)) >= 3, what="three steps", proc=proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "preempted" in out
    stopped = int(latest(run_dir).split("_")[1])
    assert stopped == max(losses(run_dir)), "the checkpoint is taken at the step where the signal arrived"

    one = launch(root, tiny_data, "pre", "cluster.nproc=1", f"trainer.max_steps={stopped + 4}", *common)
    assert one.returncode == 0, one.stderr[-3000:]
    assert f"resumed from step {stopped} (2 -> 1 ranks)" in one.stdout
    assert max(losses(run_dir)) == stopped + 4

    seen = []
    for rank in (0, 1):
        path = os.path.join(run_dir, "logs", f"samples-rank{rank}.jsonl")
        with open(path) as f:
            seen += [tuple(json.loads(line)) for line in f]
    examples = [(epoch, doc, ex) for _step, epoch, doc, ex in seen]
    assert len(examples) == len(set(examples)), "an example was trained on twice within the epoch"
    assert {step for step, *_ in seen} == set(range(1, stopped + 5))
    # packed rows: one sample line per example, more examples than rows (2 x 8 a step, then 8)
    final = [m for m in metrics(run_dir) if "train/consumed_samples" in m][-1]
    assert final["step"] == stopped + 4
    assert len(seen) == final["train/consumed_samples"] > 16 * stopped + 8 * 4


def test_wall_clock_budget_stops_all_ranks_together(tmp_path, tiny_data):
    """max_time is measured per process; the ranks must still agree on the step they stop at."""
    root = str(tmp_path / "runs")
    result = launch(root, tiny_data, "t", "cluster.nproc=2", "parallel=zero2", "trainer.max_steps=null",
                    "trainer.max_time=6", "trainer.checkpoint_every=1000", "schedule=wsd", "schedule.warmup_steps=0",
                    "schedule.warmup_fraction=0", "schedule.decay_fraction=0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max_time=6s" in result.stdout and "placed by the fraction of the budget used" in result.stdout
    # The schedule is placed by the time used, not by a step count nobody knew: full lr in the
    # first half, decayed by the end of the 6 s (the last step starts within a step of the end).
    lrs = {m["step"]: (m["train/lr"], m["train/seconds"]) for m in metrics(os.path.join(root, "t")) if "train/lr" in m}
    assert lrs[1][0] == pytest.approx(1e-3)
    assert lrs[max(lrs)][0] < 0.3e-3 and lrs[max(lrs)][1] >= 6.0
    last = max(losses(os.path.join(root, "t")))
    assert latest(os.path.join(root, "t")) == f"step_{last:06d}"


BUDGET = ["cluster.nproc=2", "parallel=zero2", "trainer.max_steps=null", "trainer.max_tokens=13000",
          "schedule=wsd", "schedule.warmup_steps=0", "schedule.warmup_fraction=0.2", "schedule.decay_fraction=0.4",
          "trainer.checkpoint_every=4"]


def _wsd(p: float) -> float:  # the curve written out independently: warmup 20%, decay over the last 40%
    return min(p / 0.2, 1.0) if p < 0.6 else max(0.0, 1.0 - (p - 0.6) / 0.4)


def test_token_budget_places_the_schedule_and_resumes_exactly_after_kill9(tmp_path, tiny_data):
    root = str(tmp_path / "runs")
    ref = launch(root, tiny_data, "ref", *BUDGET)
    assert ref.returncode == 0, ref.stderr[-3000:]
    rows = {m["step"]: m for m in metrics(os.path.join(root, "ref")) if "train/lr" in m}
    last = max(rows)
    assert f"stopped at step {last}: max_tokens=13000" in ref.stdout and last >= 10
    for step, m in rows.items():  # each step's lr is the curve at the budget used before it
        before = rows[step - 1]["train/consumed_tokens"] if step > 1 else 0
        assert m["train/lr"] == pytest.approx(1e-3 * _wsd(before / 13000), abs=1e-9), step
        assert m["train/budget_used"] == pytest.approx(min(1.0, m["train/consumed_tokens"] / 13000))
    assert rows[last]["train/lr"] < 0.25e-3 < 1e-3 == max(m["train/lr"] for m in rows.values())

    crash_dir = os.path.join(root, "crash")
    proc = start(root, tiny_data, "crash", *BUDGET)
    wait_for(lambda: latest(crash_dir) is not None, what="first checkpoint", proc=proc)
    kill_tree(proc)
    again = launch(root, tiny_data, "crash", *BUDGET)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step" in again.stdout
    assert losses(crash_dir) == losses(os.path.join(root, "ref"))
    assert {m["step"]: m["train/lr"] for m in metrics(crash_dir) if "train/lr" in m} == \
        {step: m["train/lr"] for step, m in rows.items()}
