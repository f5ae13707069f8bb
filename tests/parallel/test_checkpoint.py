"""Checkpoint meta, integrity checks and resume-mode rules (no processes, no DeepSpeed engine)."""
import json
import os

import pytest
import torch

from parallel.checkpoint import (META_FILE, CheckpointError, model_signature, peek_checkpoint, resume_mode,
                                 verify_files, write_meta)


def meta(world=2, stage=2, dtype="fp32", pp=1):
    return {"world_size": world, "zero_stage": stage, "dtype": dtype, "pipeline_stages": pp}


@pytest.mark.parametrize("src,dst,mode", [
    (meta(2, 2), (2, 2, "fp32"), "plain"),
    (meta(2, 0), (1, 0, "fp32"), "plain"),
    (meta(2, 0, "bf16"), (4, 0, "bf16"), "plain"),
    (meta(2, 2), (1, 2, "fp32"), "universal"),
    (meta(2, 2), (2, 1, "bf16"), "universal"),
    (meta(2, 1, "bf16"), (4, 2, "fp32"), "universal"),
    (meta(2, 3), (1, 3, "bf16"), "universal"),
])
def test_resume_mode_supported(src, dst, mode):
    assert resume_mode("ck", src, *dst) == mode


@pytest.mark.parametrize("src,dst", [
    (meta(2, 0), (2, 0, "bf16")), (meta(2, 0), (2, 2, "fp32")), (meta(2, 2), (2, 0, "fp32")),
    (meta(2, 2), (2, 3, "fp32")), (meta(2, 3), (2, 1, "fp32")), (meta(2, 0, pp=2), (2, 1, "fp32")),
])
def test_resume_mode_unsupported_is_one_line(src, dst):
    with pytest.raises(CheckpointError, match="ck: cannot resume") as e:
        resume_mode("ck", src, *dst)
    assert "\n" not in str(e.value)


def pipe_meta(world=2, stage=1, dtype="fp32", pp=2, partition="parameters"):
    return meta(world, stage, dtype, pp) | {"pipeline": {"stages": pp, "partition": partition}}


@pytest.mark.parametrize("src,dst,mode", [
    (pipe_meta(), (2, 1, "fp32", 2), "plain"),
    (pipe_meta(4, 0), (2, 0, "fp32", 2), "plain"),           # ZeRO-0: other replica count, same stages
    (pipe_meta(2, 1), (4, 1, "fp32", 2), "universal"),      # 2x1 -> 2x2
    (pipe_meta(2, 1), (4, 1, "bf16", 4), "universal"),      # other stage count and dtype
    (pipe_meta(2, 1), (2, 1, "fp32", 1), "universal"),      # pipeline -> plain
    (pipe_meta(2, 1), (1, 2, "fp32", 1), "universal"),
    (meta(2, 2), (4, 1, "fp32", 2), "universal"),           # plain -> pipeline
    (pipe_meta(2, 1), (2, 1, "fp32", 2, "uniform"), "universal"),  # another partition
])
def test_resume_mode_with_a_pipeline(src, dst, mode):
    assert resume_mode("ck", src, *dst) == mode


@pytest.mark.parametrize("src,dst,needle", [
    (pipe_meta(2, 0), (4, 0, "fp32", 4), "same stages and partition"),
    (pipe_meta(2, 0), (2, 0, "fp32", 2, "uniform"), "same stages and partition"),
    (pipe_meta(2, 0), (2, 1, "fp32", 2), "ZeRO-0 pipeline checkpoint"),
    (pipe_meta(2, 1), (2, 0, "fp32", 2), "ZeRO-0 pipeline checkpoint"),
    (meta(2, 0), (2, 0, "fp32", 2), "ZeRO-0 pipeline checkpoint"),
    (meta(2, 3), (2, 1, "fp32", 2), "cannot resume a ZeRO-3"),
])
def test_resume_mode_refuses_pipeline_changes_it_cannot_convert(src, dst, needle):
    with pytest.raises(CheckpointError, match="ck: cannot resume") as e:
        resume_mode("ck", src, *dst)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_meta_roundtrip_and_integrity(tmp_path):
    d = tmp_path / "step_000010"
    d.mkdir()
    (d / "a.pt").write_bytes(b"x" * 100)
    (d / "sub").mkdir()
    (d / "sub" / "b.pt").write_bytes(b"y" * 10)
    with pytest.raises(CheckpointError, match="incomplete"):
        peek_checkpoint(str(d))
    write_meta(str(d), meta() | {"model_signature": "abc"})
    m = peek_checkpoint(str(d))
    assert m["world_size"] == 2 and m["files"] == {"a.pt": 100, os.path.join("sub", "b.pt"): 10}
    verify_files(str(d), m)
    (d / "a.pt").write_bytes(b"x" * 50)
    with pytest.raises(CheckpointError, match=r"a.pt is truncated \(50 of 100 bytes\)"):
        verify_files(str(d), m)
    (d / "a.pt").write_bytes(b"x" * 100)
    os.remove(d / "sub" / "b.pt")
    with pytest.raises(CheckpointError, match="is missing"):
        verify_files(str(d), m)
    (d / META_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        peek_checkpoint(str(d))
    (d / META_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="unknown format"):
        peek_checkpoint(str(d))
    with pytest.raises(CheckpointError, match="no such directory"):
        peek_checkpoint(str(tmp_path / "nope"))


def test_model_signature_sees_names_and_shapes():
    a = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    b = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    c = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))
    assert model_signature(a) == model_signature(b) != model_signature(c)


def test_inspect_checkpoint_without_deepspeed(tmp_path):
    from parallel.checkpoint import Layout, inspect_checkpoint

    model = torch.nn.Linear(3, 4)
    sig = model_signature(model)
    d = tmp_path / "step_000002"
    d.mkdir()
    (d / "mp_rank_00_model_states.pt").write_bytes(b"z" * 8)
    write_meta(str(d), meta(2, 2) | {"model_signature": sig})
    plain = inspect_checkpoint(str(d), sig, Layout(2, 2, "fp32"))
    assert (plain.path, plain.mode, plain.meta["world_size"]) == (str(d), "plain", 2)
    assert inspect_checkpoint(str(d), sig, Layout(1, 1, "bf16")).mode == "universal"
    with pytest.raises(CheckpointError, match="model shape differs"):
        inspect_checkpoint(str(d), model_signature(torch.nn.Linear(3, 5)), Layout(2, 2, "fp32"))
    (d / "mp_rank_00_model_states.pt").write_bytes(b"z" * 4)
    with pytest.raises(CheckpointError, match="truncated"):
        inspect_checkpoint(str(d), sig, Layout(2, 2, "fp32"))
