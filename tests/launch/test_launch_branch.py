"""run.branch_from: a new run that starts as a resume of another run's checkpoint (weights,
optimizer state, lr schedule, data cursor); with run.branch_schedule=restart its own schedule
starts at the branch: WSD's decay tried from a stable checkpoint without repeating the stable part."""
from __future__ import annotations

import os

import pytest

from launch_helpers import launch, losses, metrics

STABLE = ["schedule=constant", "trainer.checkpoint_every=4", "trainer.max_steps=8"]


def _lrs(run_dir) -> dict:
    return {m["step"]: m["train/lr"] for m in metrics(run_dir) if "train/lr" in m}


def test_branches_continue_exactly_and_a_restarted_schedule_decays_from_the_branch(tmp_path, tiny_data):
    root = str(tmp_path / "runs")
    stable = launch(root, tiny_data, "stable", *STABLE)
    assert stable.returncode == 0, stable.stderr[-3000:]
    stable_dir = os.path.join(root, "stable")
    branch = os.path.join(stable_dir, "checkpoints", "step_000004")

    same = launch(root, tiny_data, "same", *STABLE, f"run.branch_from={branch}")
    assert same.returncode == 0, same.stderr[-3000:]
    assert f"branched from {branch} at step 4" in same.stdout
    want = {s: v for s, v in losses(stable_dir).items() if s > 4}
    assert losses(os.path.join(root, "same")) == want, "a branch that changes nothing continues the run exactly"

    decay = launch(root, tiny_data, "decay", *STABLE, f"run.branch_from={branch}", "run.branch_schedule=restart",
                   "schedule=linear", "schedule.warmup_steps=0")
    assert decay.returncode == 0, decay.stderr[-3000:]
    assert "lr schedule: linear restarts at the branch (step 4) over 4 steps" in decay.stdout
    decay_dir = os.path.join(root, "decay")
    assert _lrs(decay_dir) == pytest.approx({5: 1e-3, 6: 7.5e-4, 7: 5e-4, 8: 2.5e-4})
    assert losses(decay_dir)[5] == want[5]   # the same state at the branch: the first step's loss agrees
    assert losses(decay_dir)[8] != want[8]

    # relaunched, a branch resumes its own checkpoints (the source is no longer read)
    again = launch(root, tiny_data, "decay", *STABLE, f"run.branch_from={branch}", "run.branch_schedule=restart",
                   "schedule=linear", "schedule.warmup_steps=0", "trainer.max_steps=10")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step 8" in again.stdout and "branched" not in again.stdout


@pytest.mark.parametrize("overrides, needle", [
    (["run.branch_from=/no/such/step_000004"], "config key 'run.branch_from': checkpoint /no/such/step_000004: no such"),
    (["run.branch_schedule=sometimes"], "run.branch_schedule"),
    (["model.init_from={ckpt}"], "is a training checkpoint, not a Hugging Face directory: run.branch_from"),
])
def test_bad_branches_are_one_line_errors(tmp_path, tiny_data, overrides, needle):
    from launch.preflight import preflight
    from pretrain.train.config import ConfigError, validate
    from hydra import compose, initialize_config_module

    ckpt = tmp_path / "step_000004"
    ckpt.mkdir()
    (ckpt / "parallel_meta.json").write_text("{}")
    overrides = [o.format(ckpt=ckpt) for o in overrides]
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["run.name=b", f"run.root={tmp_path}", f"data.path={tiny_data}",
                                                      *overrides])
    cfg = dict(cfg)
    cfg.pop("hydra", None)
    with pytest.raises(ConfigError, match=needle):
        preflight(validate(cfg))
