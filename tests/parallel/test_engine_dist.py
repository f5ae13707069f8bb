"""Real multi-process runs (torchrun, gloo, DS_ACCELERATOR=cpu) of the Engine on a toy BERT.

Launches are slow (~15-25 s), so each one checks several things; see _worker.py for what runs.
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(scenario: str, work: Path, nproc: int | None = 2, timeout: int = 300, script: str = "_worker.py") -> dict:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if nproc is None:  # plain python, no launcher variables
        cmd = [sys.executable, str(HERE / script), scenario, str(work)]
    else:
        cmd = [str(TORCHRUN), "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
               "--master_port", str(_port()), str(HERE / script), scenario, str(work)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{scenario} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return json.loads((work / f"{scenario}.json").read_text())


def losses(metrics):
    return [m["loss"] for m in metrics]


def test_zero_stages_train_identically_and_match_the_global_batch_reference(tmp_path):
    r = launch("stages", tmp_path)
    ref_loss, ref_norm = r["reference"]
    base = losses(r["zero0"])
    for stage in range(4):
        ms = r[f"zero{stage}"]
        # Step 0: exactly the single-process full-batch loss and gradient norm.
        assert ms[0]["loss"] == pytest.approx(ref_loss, rel=1e-5)
        assert ms[0]["grad_norm"] == pytest.approx(ref_norm, rel=1e-4)
        assert losses(ms) == pytest.approx(base, rel=1e-5)
        assert ms[-1]["loss"] < ms[0]["loss"] - 0.5  # it learns
        before, after = r[f"eval{stage}"]
        assert after[0] / after[1] < before[0] / before[1] - 0.5  # held-out MLM loss falls
        # stats are summed over micro-batches and ranks: 2 ranks x 2 micro x 4 sequences
        assert all(m["sentence_count"] == 16 for m in ms)
        assert ms[0]["mlm_loss_sum"] / ms[0]["mlm_count"] + ms[0]["sentence_loss_sum"] / 16 == pytest.approx(
            ms[0]["loss"], rel=1e-5)
    assert [m["lr"] for m in r["zero0"]][:3] == pytest.approx([0.005, 0.01, 0.01])
    assert r["lamb"][-1]["loss"] < r["lamb"][0]["loss"]
    if "fp16" in r:  # only where the accelerator reports fp16 support
        assert losses(r["fp16"]) == pytest.approx(base, rel=1e-2)
        assert all(m["loss_scale"] > 1 and m["skipped"] == 0 for m in r["fp16"])


def test_lamb_trust_ratios_are_per_tensor_under_every_zero_stage(tmp_path):
    r = launch("lamb", tmp_path)
    # After one step the weights equal ZeRO-0's (whose LAMB is checked against a hand-computed
    # per-tensor LAMB in test_optim.py); over 20 steps the losses stay within 1e-4.
    for stage in (1, 2, 3):
        assert r[f"zero{stage}_one_step_rel"] < 1e-6, (stage, r)
    assert len(r["zero0"]) == 20 and r["zero0"][-1] < r["zero0"][0]
    for stage in (1, 2, 3):
        assert r[f"zero{stage}"] == pytest.approx(r["zero0"], rel=1e-4), stage


def test_bf16_gradients_accumulate_in_fp32(tmp_path):
    r = launch("accum", tmp_path)
    for name, out in r.items():
        assert out["tensors"] == out["per_step"] > 0, (name, out)
        # fp32 sums: ~1e-7; summed in bf16 it would be ~1e-3 (2^-9 per add)
        assert out["rel"] < 1e-5, (name, out)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    work = tmp_path_factory.mktemp("ckpt")
    return work, launch("save", work)


def test_resume_in_a_fresh_launch_is_bit_identical(saved):
    work, before = saved
    r = launch("resume", work)
    for name in ("z2", "z3bf16"):
        assert r[name]["client"] == {"step": 3, "note": "hello"} and r[name]["step"] == 3
        assert losses(r[name]["metrics"]) == losses(before[name][3:])  # exact equality
        assert [m["grad_norm"] for m in r[name]["metrics"]] == [m["grad_norm"] for m in before[name][3:]]
        assert [m["lr"] for m in r[name]["metrics"]] == [m["lr"] for m in before[name][3:]]
    assert "truncated" in r["truncated"] and str(work / "bad") in r["truncated"]
    assert "truncated" in r["truncated_load"]
    assert "model shape differs" in r["other_shape"]
    assert "parallel_meta.json missing" in r["unfinished"]
    assert r["corrupt"] and "cannot load" in r["corrupt"] and str(work / "corrupt") in r["corrupt"]
    for key in ("truncated", "other_shape", "unfinished", "corrupt"):
        assert "\n" not in r[key]


def test_one_rank_resumes_a_two_rank_checkpoint_via_universal(saved):
    work, before = saved
    r = launch("universal", work, nproc=1)
    assert r["universal_exists"] and r["client"]["step"] == 3 and r["step"] == 3
    assert losses(r["metrics"]) == pytest.approx(losses(before["z2src"][3:]), rel=1e-5)
    assert losses(r["zero1_bf16"]) == pytest.approx(losses(before["z2src"][3:]), rel=1e-2)
    assert losses(r["zero3"]) == pytest.approx(losses(before["z3src"][3:]), rel=1e-5)
    assert "cannot resume a ZeRO-3 fp32 checkpoint of 2 processes" in r["refused"]
    # The universal-built engine reloads a checkpoint it saved itself (the trainer's rewind).
    assert losses(r["own_reloaded"]) == pytest.approx(losses(r["own_next"]), rel=1e-6)


def test_consolidate_fp32_offline(saved):
    from parallel.convert import consolidate_fp32

    work, before = saved
    for name in ("z2", "z3bf16"):
        sd = consolidate_fp32(str(work / name))
        assert sorted(sd) == before["consolidated_keys"]
        assert all(v.dtype == torch.float32 for v in sd.values())
    assert sorted(consolidate_fp32(str(work / "z2"))) == before["consolidated_keys"]


def test_single_process_without_launcher_resume_and_zero3_offload(tmp_path):
    r = launch("single", tmp_path, nproc=None)
    assert r["topo"] == [0, 1] and r["client"]["step"] == 2 and r["consolidated_equal"]
    assert losses(r["resumed"]) == losses(r["base"])[2:]
    assert losses(r["offload"]) == pytest.approx(losses(r["base"]), rel=1e-5)


def test_one_rank_non_finite_step_is_dropped_on_every_rank_and_a_live_reload_is_exact(tmp_path):
    """The guard at world size 2 for ZeRO-0 fp32, ZeRO-1/2 bf16 (where DeepSpeed itself would
    apply a NaN update) and ZeRO-3: rank 1's NaN loss, or NaN gradient with a finite loss."""
    r = launch("guard", tmp_path)
    for layout, out in r.items():
        for kind in ("loss", "grad"):
            m = out[kind]
            assert m["nonfinite"] == 1.0 and m["skipped"] == 1.0, (layout, kind, m)
            assert out[f"{kind}_unchanged"] and out[f"{kind}_lr_same"], (layout, kind)
        assert math.isnan(out["loss"]["loss"]), layout  # rank 1's NaN, reported on rank 0
        assert math.isfinite(out["grad"]["loss"]) and not math.isfinite(out["grad"]["grad_norm"]), layout
        assert out["finite"] and out["global_step"] == 4, layout  # DeepSpeed counts the dropped steps
        assert all(m["nonfinite"] == 0.0 and m["skipped"] == 0.0 for m in out["after"]), layout
        # Dropped updates left no trace: the reloaded checkpoint (step 2) continues exactly alike.
        assert out["reloaded_step"] == 2, layout
        assert losses(out["reloaded"]) == losses(out["after"]), layout
        assert [m["grad_norm"] for m in out["reloaded"]] == [m["grad_norm"] for m in out["after"]], layout
        assert out["poisoned_weights_finite"] is False, layout


def test_copy_parameters_copies_module_master_and_optimizer_state_in_every_layout(tmp_path):
    r = launch("copy", tmp_path)
    assert sorted(r) == sorted(["z0", "z1", "z2", "z0bf16", "z1bf16", "z2bf16"])
    assert r["z0"]["kind"] == "module" and r["z0bf16"]["kind"] == "unfused" and r["z2bf16"]["kind"] == "fragments"
    for name, out in r.items():
        for key in ("module_equal", "master_equal", "state_equal", "step_equal", "moments_nonzero", "dst_moved"):
            assert out[key], (name, key, out)
        assert all(math.isfinite(x) for x in out["after"]), (name, out)
        assert out["reloaded"] == out["after"], (name, out)   # copy after a reload: bit for bit


