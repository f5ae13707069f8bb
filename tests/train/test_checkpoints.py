"""Checkpoint directory rules: atomic latest, completeness, truncation, retention."""
import os

from parallel.checkpoint import write_meta
from pretrain.train import checkpoints as ck


def _complete(step_dir, _step=None):
    """What a finished engine.save leaves: the meta file, then `latest`."""
    write_meta(step_dir, {"world_size": 1, "zero_stage": 0, "dtype": "fp32", "model_signature": "x"})
    ck.publish_latest(step_dir)


def _fake_save(root, step, payload=b"x" * 100):
    d = os.path.join(root, ck.step_dir_name(step))
    os.makedirs(os.path.join(d, "sub"), exist_ok=True)
    with open(os.path.join(d, "sub", "model.pt"), "wb") as f:
        f.write(payload)
    return d


def test_complete_checkpoint_is_the_resume_point(tmp_path):
    root = str(tmp_path)
    for step in (10, 20):
        _complete(_fake_save(root, step), step)
    assert open(os.path.join(root, "latest")).read() == "step_000020"
    assert ck.resume_candidates(root, warn=lambda m: None) == [os.path.join(root, "step_000020"), os.path.join(root, "step_000010")]


def test_interrupted_save_is_never_resumed_from(tmp_path):
    root = str(tmp_path)
    _complete(_fake_save(root, 10), 10)
    _fake_save(root, 20)  # no complete.json, latest still says 10
    warnings = []
    assert ck.resume_candidates(root, warn=warnings.append) == [os.path.join(root, "step_000010")]


def test_truncated_file_makes_checkpoint_refused_and_previous_used(tmp_path):
    root = str(tmp_path)
    _complete(_fake_save(root, 10), 10)
    d = _fake_save(root, 20)
    _complete(d, 20)
    with open(os.path.join(d, "sub", "model.pt"), "r+b") as f:
        f.truncate(10)
    warnings = []
    assert ck.resume_candidates(root, warn=warnings.append) == [os.path.join(root, "step_000010")]
    assert any("truncated" in w and "step_000020" in w for w in warnings)


def test_deleted_file_is_detected(tmp_path):
    root = str(tmp_path)
    d = _fake_save(root, 5)
    _complete(d, 5)
    os.remove(os.path.join(d, "sub", "model.pt"))
    verdict = ck.verify(d)
    assert not verdict.ok and "missing" in verdict.reason


def test_prune_keeps_last_k_complete(tmp_path):
    root = str(tmp_path)
    for step in (10, 20, 30, 40):
        _complete(_fake_save(root, step), step)
    removed = ck.prune(root, keep=2)
    assert sorted(os.path.basename(p) for p in removed) == ["step_000010", "step_000020"]
    assert [s for s, _ in ck.step_dirs(root)] == [40, 30]


def test_prune_leaves_a_save_in_progress_alone(tmp_path):
    root = str(tmp_path)
    _complete(_fake_save(root, 10), 10)
    _fake_save(root, 20)  # being written
    ck.prune(root, keep=1)
    assert [s for s, _ in ck.step_dirs(root)] == [20, 10]
