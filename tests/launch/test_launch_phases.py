"""Two training phases (seq 64 -> 128, masking 0.3 -> 0.15, a constant lr then a linear decay from
half the peak: WSD's decay as a phase) end to end: killed in phase 1 and again in phase 2, the
relaunched run's losses equal the uninterrupted run's, the boundary at the same step."""
from __future__ import annotations

import os

import pytest

from launch_helpers import kill_tree, latest, launch, losses, metrics, start, wait_for

PHASES = ("trainer.phases=[{name:short,steps:6,set:{objective.mlm_probability:0.3}},"
          "{name:long,set:{data:{max_seq_len:128},objective:{mlm_probability:0.15},"
          "schedule:{name:linear,warmup_steps:0},optim.lr:5e-4}}]")
RUN = ["cluster.nproc=2", "parallel=zero2", "trainer.grad_accum=2", "trainer.checkpoint_every=4",
       "trainer.max_steps=12", "schedule=constant", PHASES]


def _phases(run_dir) -> dict:
    return {m["step"]: m["train/phase"] for m in metrics(run_dir) if "train/phase" in m}


def test_two_phases_resume_exactly_on_both_sides_of_the_boundary(tmp_path, tiny_data):
    root = str(tmp_path / "runs")
    ref = launch(root, tiny_data, "ref", *RUN)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "phase 1/2 (short, 6 steps): objective.mlm_probability=0.3" in ref.stdout
    assert "phase 2/2 (long, until the budget ends): data.max_seq_len=128, objective.mlm_probability=0.15, " \
           "schedule.name=linear, schedule.warmup_steps=0, optim.lr=0.0005 starts after step 6" in ref.stdout
    ref_dir = os.path.join(root, "ref")
    assert _phases(ref_dir) == {s: 1 if s <= 6 else 2 for s in range(1, 13)}
    from launch.status import status_lines

    assert ("phase", "2/2 (long) at step 12") in status_lines(ref_dir)
    rows = {m["step"]: m for m in metrics(ref_dir) if "train/loss" in m}
    # the lr of each step: warmup (2 steps) then constant in phase 1; phase 2 decays linearly
    # from optim.lr=5e-4 over its 6 steps (the steps left of max_steps)
    want = [5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3] + [5e-4 * (6 - k) / 6 for k in range(6)]
    assert [rows[s]["train/lr"] for s in range(1, 13)] == pytest.approx(want)
    # phase 2 reads rows of 128 positions: twice the positions per step (packed rows are full)
    assert rows[8]["train/consumed_tokens"] - rows[7]["train/consumed_tokens"] > \
        1.5 * (rows[6]["train/consumed_tokens"] - rows[5]["train/consumed_tokens"])

    crash = os.path.join(root, "crash")
    for stop_after in (4, 8):   # killed in phase 1, then in phase 2
        proc = start(root, tiny_data, "crash", *RUN)
        wait_for(lambda: latest(crash) is not None and int(latest(crash).split("_")[1]) >= stop_after,
                 what=f"checkpoint {stop_after}", proc=proc)
        kill_tree(proc)
    again = launch(root, tiny_data, "crash", *RUN)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "phase 2/2 (long, until the budget ends)" in again.stdout and "(resumed)" in again.stdout
    assert losses(crash) == losses(ref_dir)
    assert [m["train/lr"] for m in metrics(crash) if "train/lr" in m][-6:] == pytest.approx(want[-6:])
    assert _phases(crash) == _phases(ref_dir)


def test_a_context_extension_phase_changes_rotary_and_window_and_the_export_keeps_them(tmp_path, tiny_data):
    """ModernBERT's context extension: the second phase trains at twice the length with a new
    global rotary theta and a wider local window; the exported config has the phase's values."""
    import json

    root = str(tmp_path / "runs")
    run = launch(root, tiny_data, "ext", "model=modernbert-tiny", "model.vocab_size=0", "trainer.max_steps=4",
                 "trainer.export_on_finish=true", "trainer.phases=[{name:base,steps:2},{name:ext,set:{data.max_seq_len:128,"
                 "model.global_rope_theta:320000,model.local_attention:256}}]")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "phase 2/2 (ext, until the budget ends): data.max_seq_len=128, model.global_rope_theta=320000, " \
           "model.local_attention=256 starts after step 2" in run.stdout
    with open(os.path.join(root, "ext", "export", "config.json")) as f:
        exported = json.load(f)
    assert exported["global_rope_theta"] == 320000 and exported["local_attention"] == 256
