"""Every tensor the loop, eval and engine hand to a collective is on the process group's device.

A pure NCCL group rejects host tensors, and a single-GPU run must hit that the same way a
64-GPU run would: the trainer runs its collectives at world size 1 too. The real training loop
(train steps, eval, a checkpoint) runs in one process with our collectives routed through a
recording stand-in for an NCCL group (see _collectives_worker.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_module

HERE = Path(__file__).resolve().parent
STEPS, EVAL_EVERY = 4, 2


def _run_dir(tmp_path, data) -> str:
    from launch.preflight import preflight
    from launch.rundir import prepare_run_dir
    from pretrain.train.config import validate

    overrides = ["run.name=nccl", f"run.root={tmp_path}", f"data.path={data}", "model=bert-tiny",
                 "data.max_seq_len=32", "data.micro_batch_size=4", "data.num_workers=0", "precision=fp32",
                 f"trainer.max_steps={STEPS}", f"trainer.eval_every={EVAL_EVERY}", "trainer.eval_batches=2",
                 "trainer.checkpoint_every=3", "trainer.log_every=1", "trainer.progress=false",
                 "trainer.export_on_finish=false", "tracker=none", "trainer.grad_accum=2"]
    with initialize_config_module(config_module="conf", version_base="1.3"):
        raw = compose(config_name="train", overrides=overrides)
    raw = dict(raw)
    raw.pop("hydra", None)
    cfg = validate(raw)
    preflight(cfg)
    return prepare_run_dir(cfg)


def test_loop_eval_and_engine_collectives_only_see_backend_device_tensors(tmp_path, prepared_demo):
    run_dir = _run_dir(tmp_path, prepared_demo)
    out = tmp_path / "calls.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.setdefault("DS_ACCELERATOR", "cpu")
    proc = subprocess.run([sys.executable, str(HERE / "_collectives_worker.py"), run_dir, str(out)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=HERE.parents[1])
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["error"] is None, result["error"]  # no host tensor reached the "NCCL" group
    reduces = [c for c in result["calls"] if c["op"] == "all_reduce"]
    assert {c["device"] for c in reduces} == {"cuda"}
    # They ran at world size 1: per step the engine's global label counts and its one reduction,
    # which also carries the loop's counts and stop flags (2 per step), plus eval's per-batch
    # "active" flags and its totals.
    assert len(reduces) >= 2 * STEPS + 2 * (STEPS // EVAL_EVERY)
    assert any(c["op"] == "all_gather_object" for c in result["calls"])  # the data cursor at save
    assert os.path.isfile(os.path.join(run_dir, "checkpoints", "latest"))
