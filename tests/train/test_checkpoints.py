"""CheckpointManager rules: atomic latest, completeness, truncation, retention, what to resume from."""
import os
import shutil

import pytest

from parallel.checkpoint import Layout, write_meta
from pretrain.train.checkpoint_manager import CheckpointManager, ResumeError, is_complete, step_dir_name

LAYOUT = Layout(world_size=1, zero_stage=0, dtype="fp32")


def _manager(tmp_path, keep=3, log=None):
    return CheckpointManager(str(tmp_path), keep=keep, log=log or (lambda m: None))


def _complete(manager, step_dir):
    """What a finished engine.save leaves: the meta file, then `latest`."""
    write_meta(step_dir, {"world_size": 1, "zero_stage": 0, "dtype": "fp32", "model_signature": "x"})
    manager.publish_latest(step_dir)


def _fake_save(manager, step, payload=b"x" * 100):
    d = os.path.join(manager.root, step_dir_name(step))
    os.makedirs(os.path.join(d, "sub"), exist_ok=True)
    with open(os.path.join(d, "sub", "model.pt"), "wb") as f:
        f.write(payload)
    return d


def _paths(plans):
    return [p.path for p in plans]


def test_complete_checkpoint_is_the_resume_point(tmp_path):
    m = _manager(tmp_path)
    for step in (10, 20):
        _complete(m, _fake_save(m, step))
    assert open(os.path.join(m.root, "latest")).read() == "step_000020"
    plans = m.plan_resume("x", LAYOUT)
    assert _paths(plans) == [os.path.join(m.root, "step_000020"), os.path.join(m.root, "step_000010")]
    assert {p.mode for p in plans} == {"plain"}
    assert m.complete() == _paths(plans)


def test_interrupted_save_is_never_resumed_from(tmp_path):
    m = _manager(tmp_path)
    _complete(m, _fake_save(m, 10))
    _fake_save(m, 20)  # no meta, latest still says 10
    assert _paths(m.plan_resume("x", LAYOUT)) == [os.path.join(m.root, "step_000010")]


def test_truncated_file_makes_checkpoint_refused_and_previous_used(tmp_path):
    warnings = []
    m = _manager(tmp_path, log=warnings.append)
    _complete(m, _fake_save(m, 10))
    d = _fake_save(m, 20)
    _complete(m, d)
    with open(os.path.join(d, "sub", "model.pt"), "r+b") as f:
        f.truncate(10)
    assert _paths(m.plan_resume("x", LAYOUT)) == [os.path.join(m.root, "step_000010")]
    assert any("truncated" in w and "step_000020" in w for w in warnings)


def test_other_model_shape_or_no_usable_checkpoint_is_refused_in_one_line(tmp_path):
    m = _manager(tmp_path)
    _complete(m, _fake_save(m, 10))
    with pytest.raises(ResumeError, match="none is usable .*model shape differs.*run.fresh=true") as e:
        m.plan_resume("another-signature", LAYOUT)
    assert "\n" not in str(e.value)
    assert _manager(tmp_path / "empty").plan_resume("x", LAYOUT) == []


def test_deleted_file_is_detected(tmp_path):
    m = _manager(tmp_path)
    d = _fake_save(m, 5)
    _complete(m, d)
    os.remove(os.path.join(d, "sub", "model.pt"))
    ok, reason = is_complete(d)
    assert not ok and "missing" in reason


def test_prune_keeps_last_k_complete(tmp_path):
    m = _manager(tmp_path, keep=2)
    for step in (10, 20, 30, 40):
        _complete(m, _fake_save(m, step))
    removed = m.prune()
    assert sorted(os.path.basename(p) for p in removed) == ["step_000010", "step_000020"]
    assert [s for s, _ in m.step_dirs()] == [40, 30]


def test_prune_leaves_a_save_in_progress_alone(tmp_path):
    m = _manager(tmp_path, keep=1)
    _complete(m, _fake_save(m, 10))
    _fake_save(m, 20)  # being written
    m.prune()
    assert [s for s, _ in m.step_dirs()] == [20, 10]


def test_a_first_save_killed_before_publishing_starts_over_but_a_broken_published_one_refuses(tmp_path):
    warnings = []
    m = _manager(tmp_path, log=warnings.append)
    _fake_save(m, 1)  # killed mid-save: no meta, and no `latest` was ever written
    assert m.plan_resume("x", LAYOUT) == []
    write_meta(os.path.join(m.root, "step_000001"), {"world_size": 1, "zero_stage": 0, "dtype": "fp32",
                                                     "model_signature": "x"})  # killed just before `latest`
    assert m.plan_resume("x", LAYOUT) == [] and m.complete() == []
    assert any("never published" in w and "step_000001" in w for w in warnings)
    _complete(m, _fake_save(m, 2))  # published: step 1 is now an older complete checkpoint
    assert _paths(m.plan_resume("x", LAYOUT)) == [os.path.join(m.root, f"step_00000{s}") for s in (2, 1)]
    shutil.rmtree(os.path.join(m.root, "step_000001"))
    os.remove(os.path.join(m.root, "step_000002", "sub", "model.pt"))  # published, then damaged
    with pytest.raises(ResumeError, match="none is usable"):
        m.plan_resume("x", LAYOUT)


def test_a_meta_tmp_left_by_a_killed_save_is_not_part_of_the_checkpoint(tmp_path):
    m = _manager(tmp_path)
    d = _fake_save(m, 3)
    open(os.path.join(d, "parallel_meta.json.tmp"), "w").close()  # the kill came mid meta write
    _complete(m, d)
    assert is_complete(d) == (True, "")
