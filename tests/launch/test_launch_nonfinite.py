"""A diverging run never trains on NaN, never writes or exports a NaN checkpoint, and says so.

The real CLI, torchrun, gloo and DeepSpeed. At world size 2 one rank alone goes non-finite
through a test-only fault injection (tests/launch/faults/sitecustomize.py, on the ranks'
PYTHONPATH): both ranks must see it in the same step.
"""
from __future__ import annotations

import json
import math
import os

import torch

from launch_helpers import latest, launch, run_env

FAULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "faults")
WS2 = ["cluster.nproc=2", "parallel=zero2", "precision=bf16"]  # ZeRO-2 bf16: DeepSpeed alone would apply a NaN update


def faulty_env(**spec) -> dict:
    env = run_env()
    env["PYTHONPATH"] = os.pathsep.join([FAULTS, env.get("PYTHONPATH", "")])
    env["PRETRAIN_TEST_FAULTS"] = json.dumps(spec)
    return env


def strict_metrics(run_dir: str) -> list[dict]:
    """metrics.jsonl parsed as strict JSON (a bare NaN/Infinity raises)."""
    def refuse(token):
        raise AssertionError(f"metrics.jsonl is not JSON: {token}")

    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


def train_rows(run_dir: str) -> dict[int, dict]:
    rows = {}
    for r in strict_metrics(run_dir):
        if "train/mlm_acc" in r:
            assert r["step"] not in rows, f"step {r['step']} logged twice"
            rows[r["step"]] = r
    return rows


def step_dirs(run_dir: str) -> list[str]:
    return sorted(d for d in os.listdir(os.path.join(run_dir, "checkpoints")) if d.startswith("step_"))


def finite_checkpoint(run_dir: str, name: str) -> bool:
    from parallel.convert import consolidate_fp32

    state = consolidate_fp32(os.path.join(run_dir, "checkpoints", name))
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def train_state(run_dir: str, name: str) -> dict:
    """The TrainState a checkpoint holds (read weights-only, as the trainer does)."""
    from parallel.checkpoint import weights_only_loads

    with weights_only_loads():
        states = torch.load(os.path.join(run_dir, "checkpoints", name, "mp_rank_00_model_states.pt"),
                            map_location="cpu", weights_only=True)
    return states["client_state"]["train_state"]


def test_divergence_stops_with_one_line_and_the_last_good_checkpoint_stays_latest(tmp_path, tiny_data):
    """The issue's repro: lr=1e6 without clipping trained 15 NaN steps, wrote and exported NaN, exited 0."""
    root = str(tmp_path / "runs")
    r = launch(root, tiny_data, "div", "parallel=single", "precision=fp32", "trainer.max_steps=15", "optim.lr=1e6",
               "optim.grad_clip=0", "trainer.checkpoint_every=1", "trainer.export_on_finish=true")
    run_dir = os.path.join(root, "div")
    assert r.returncode != 0
    line = r.stderr.strip().splitlines()[-1]
    rows = train_rows(run_dir)
    bad = min(s for s, row in rows.items() if row["train/loss"] is None)
    assert bad >= 2 and max(rows) == bad, "nothing trains after the first non-finite step"
    assert line.startswith(f"pretrain-launch: error: training diverged at step {bad}: non-finite loss"), line
    good = f"step_{bad - 1:06d}"
    for needle in (f"{good} (still `latest`)", "optim.lr (now 1e+06)", "optim.grad_clip=1.0", "stopped without saving"):
        assert needle in line, (needle, line)
    assert rows[bad]["nonfinite"]["train/loss"] == "nan"
    assert all(math.isfinite(rows[s]["train/loss"]) for s in range(1, bad))
    assert latest(run_dir) == good and step_dirs(run_dir)[-1] == good
    assert all(finite_checkpoint(run_dir, d) for d in step_dirs(run_dir))
    assert not os.path.exists(os.path.join(run_dir, "export")), "a diverged run exports nothing"

    # skip cannot save this run (every batch diverges): it stops after max_skips in a row.
    r = launch(root, tiny_data, "div-skip", "parallel=single", "precision=fp32", "trainer.max_steps=15", "optim.lr=1e6",
               "optim.grad_clip=0", "trainer.checkpoint_every=1", "trainer.on_nonfinite=skip", "trainer.max_skips=2")
    run_dir = os.path.join(root, "div-skip")
    assert r.returncode != 0
    assert "3 non-finite steps in a row (trainer.max_skips=2)" in r.stderr.strip().splitlines()[-1]
    rows = train_rows(run_dir)
    nonfinite = [s for s, row in rows.items() if row["train/loss"] is None]
    # At lr 1e6 a skipped step's successor is usually non-finite too, but not always (a batch
    # may give a finite loss from the same state): the run stops at the third in a row.
    last = max(rows)
    assert nonfinite[0] == bad and nonfinite[-3:] == [last - 2, last - 1, last]
    streaks = [0]  # runs of non-finite steps before the last three
    run = 0
    for step in range(1, last - 2):
        run = run + 1 if step in nonfinite else 0
        streaks.append(run)
    assert max(streaks) < 3, "the run should have stopped at an earlier third non-finite step in a row"
    # A skipped step's state is the last good one: saving it is fine; nothing non-finite is saved.
    assert latest(run_dir) == f"step_{last - 1:06d}" and all(finite_checkpoint(run_dir, d) for d in step_dirs(run_dir))


def test_one_rank_nan_is_skipped_by_both_ranks_then_a_stop_keeps_latest(tmp_path, tiny_data):
    root = str(tmp_path / "runs")
    run_dir = os.path.join(root, "skip")
    common = [*WS2, "trainer.checkpoint_every=4", "trainer.keep_checkpoints=1"]
    r = launch(root, tiny_data, "skip", *common, "trainer.max_steps=8", "trainer.on_nonfinite=skip",
               "trainer.export_on_finish=true", env=faulty_env(rank=1, nan=[3, 4], grad_nan=[6]))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = train_rows(run_dir)
    assert sorted(rows) == list(range(1, 9))
    assert [s for s, row in rows.items() if "nonfinite" in row] == [3, 4, 6]
    assert rows[6]["train/grad_norm"] is None and math.isfinite(rows[6]["train/loss"])  # only its gradient was NaN
    assert all(math.isfinite(rows[s]["train/loss"]) for s in (1, 2, 5, 7, 8))
    assert rows[8]["train/skipped_updates"] == 3 and rows[8]["train/discarded_batches"] == 3
    assert r.stdout.count("[rank 0] warning: non-finite") == 3  # rank 0 saw rank 1's NaN, each time
    state = train_state(run_dir, "step_000008")
    assert state["discarded"] == [[3, 4], [6, 6]] and state["nonfinite_steps"] == 3
    assert finite_checkpoint(run_dir, "step_000008")
    from safetensors.torch import load_file
    exported = load_file(os.path.join(run_dir, "export", "model.safetensors"))
    assert all(bool(torch.isfinite(v).all()) for v in exported.values())

    # The same run goes on with the default policy: rank 1's NaN at step 10 stops both ranks.
    r = launch(root, tiny_data, "skip", *common, "trainer.max_steps=12", env=faulty_env(rank=1, nan=[2]))
    assert r.returncode != 0
    line = r.stderr.strip().splitlines()[-1]
    assert "training diverged at step 10" in line and "step_000008 (still `latest`)" in line, line
    for rank in (0, 1):
        with open(os.path.join(run_dir, "logs", f"error-rank{rank}.txt")) as f:
            assert "training diverged at step 10" in f.readline(), f"rank {rank} did not stop at step 10"
    assert latest(run_dir) == "step_000008" and step_dirs(run_dir) == ["step_000008"]
    assert max(train_rows(run_dir)) == 10


def test_rewind_on_nan_and_on_a_loss_spike_reloads_the_last_checkpoint_and_resumes_exactly(tmp_path, tiny_data):
    root = str(tmp_path / "runs")
    run_dir = os.path.join(root, "rw")
    common = [*WS2, "trainer.checkpoint_every=4", "trainer.on_nonfinite=rewind", "trainer.loss_spike.action=rewind",
              "trainer.loss_spike.warmup=3", "trainer.loss_spike.window=3", "trainer.loss_spike.factor=3"]
    r = launch(root, tiny_data, "rw", *common, "trainer.max_steps=12", env=faulty_env(rank=1, nan=[6], scale={"10": 40.0}))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "at step 6: rewound to" in r.stdout and "step_000004" in r.stdout and "batches 5-6 discarded" in r.stdout
    assert "loss spike" in r.stdout and "at step 10: rewound to" in r.stdout and "batches 9-10 discarded" in r.stdout
    rows = train_rows(run_dir)
    assert sorted(rows) == list(range(1, 13)), "metrics steps never repeat"
    assert [s for s, row in rows.items() if row["train/loss"] is None] == [6]
    assert rows[10]["train/loss_ratio"] > 3 and rows[12]["train/rewinds"] == 2
    state = train_state(run_dir, "step_000012")
    assert [(w["at"], w["to"]) for w in state["rewinds"]] == [(6, 4), (10, 8)]
    assert state["discarded"] == [[5, 6], [9, 10]] and state["step"] == 12
    with open(os.path.join(run_dir, "checkpoints", "step_000012", "parallel_meta.json")) as f:
        meta = json.load(f)
    # 12 batches consumed, 4 of them discarded by the rewinds: 8 optimizer updates in the model.
    assert meta["global_step"] == 8 and meta["state_finite"] is True
    # A relaunch resumes after the rewinds: their record and budget carry over.
    more = launch(root, tiny_data, "rw", *common, "trainer.max_steps=14", "trainer.max_rewinds=2",
                  env=faulty_env(rank=1, nan=[1]))
    assert more.returncode != 0 and "resumed from step 12" in more.stdout, more.stderr[-3000:]
    assert "after 2 rewinds (trainer.max_rewinds=2)" in more.stderr.strip().splitlines()[-1]
    assert latest(run_dir) == "step_000012"
