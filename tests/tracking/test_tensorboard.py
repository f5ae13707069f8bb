"""TensorBoard events are readable by tensorboard's EventAccumulator; resume purges later steps."""
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pretrain.tracking import build_tracker

TB = {"backends": ["tensorboard"]}


def scalars(logdir):
    ea = EventAccumulator(str(logdir))
    ea.Reload()
    return ea, {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def test_scalars_groups_and_hparams(tmp_path):
    t = build_tracker(TB, tmp_path, "r", {"model": {"hidden_size": 64, "arch": "bert"}, "optim": {"betas": [0.9, 0.99]}})
    for s in range(1, 4):
        t.log({"train/loss": 10.0 / s, "train/lr": 1e-3}, step=s)
    t.log({"eval/mlm_acc": 0.5, "eval/loss": 3.0}, step=3)
    t.close()
    logdir = tmp_path / "tensorboard"
    assert [p for p in logdir.iterdir() if p.is_dir()] == []   # hparams did not create sub-runs
    ea, got = scalars(logdir)
    assert set(got) == {"train/loss", "train/lr", "eval/mlm_acc", "eval/loss"}
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3]
    assert abs(got["train/loss"][1][1] - 5.0) < 1e-6
    assert got["eval/mlm_acc"] == [(3, 0.5)]
    assert "_hparams_/experiment" in ea.PluginTagToContent("hparams")


def test_resume_purges_steps_after_checkpoint(tmp_path):
    t = build_tracker(TB, tmp_path, "r", {})
    for s in range(10):
        t.log({"train/loss": float(s)}, step=s)
    t.close()                                  # "crash" after step 9; checkpoint was at step 5
    t = build_tracker(TB, tmp_path, "r", {}, resume_state={"last_step": 5})
    for s in range(6, 9):
        t.log({"train/loss": 100.0 + s}, step=s)
    t.close()
    _, got = scalars(tmp_path / "tensorboard")
    assert got["train/loss"] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0),
                                 (6, 106.0), (7, 107.0), (8, 108.0)]


def test_fresh_start_over_old_events_hides_them(tmp_path):
    t = build_tracker(TB, tmp_path, "r", {})
    for s in range(5):
        t.log({"train/loss": float(s)}, step=s)
    t.close()                                  # crashed before the first checkpoint: relaunch fresh
    t = build_tracker(TB, tmp_path, "r", {})
    for s in range(2):
        t.log({"train/loss": 50.0 + s}, step=s)
    t.close()
    _, got = scalars(tmp_path / "tensorboard")
    assert got["train/loss"] == [(0, 50.0), (1, 51.0)]


def test_non_finite_values_are_flagged_not_drawn(tmp_path):
    t = build_tracker(TB, tmp_path, "r", {})
    t.log({"train/loss": 2.0}, step=1)
    t.log({"train/loss": float("nan"), "train/grad_norm": float("inf"), "train/lr": 1e-3}, step=2)
    t.log({"train/loss": 1.5}, step=3)
    t.close()
    _, got = scalars(tmp_path / "tensorboard")
    assert got["train/loss"] == [(1, 2.0), (3, 1.5)]
    assert got["nonfinite/train/loss"] == [(2, 1.0)] and got["nonfinite/train/grad_norm"] == [(2, 1.0)]
    assert [s for s, _ in got["train/lr"]] == [2]  # the finite values of that step are drawn
