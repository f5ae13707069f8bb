"""The CLI end to end: dry run, 2 processes (torchrun + DDP over gloo) give the metrics of 1
process, a killed run resumes and continues as if uninterrupted, a `-m` sweep makes one run per
value and pretrain-compare reads fine-tuning runs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from ft_helpers import cli, evals, metrics, run_inprocess, task_overrides

# dropout off everywhere (also LoRA's), so 1 and 2 processes compute the same function
SAME = ["method=lora", "method.dropout=0", "model.hidden_dropout=0", "model.attention_dropout=0",
        "trainer.max_steps=12", "trainer.eval_every=6", "optim.lr=1e-2"]


def test_dry_run_prints_the_resolved_config_and_starts_nothing(tmp_path, test_backbone, source_task):
    result = cli(*task_overrides(source_task, tmp_path, "dry", test_backbone), "run.dry_run=true", "precision=auto",
                 "cluster.nproc=2")
    assert result.returncode == 0, result.stderr
    assert "precision: auto -> " in result.stdout and "dtype: auto" not in result.stdout
    assert "would run:" in result.stdout and "launch.worker" in result.stdout
    assert not (tmp_path / "dry").exists()


def test_two_processes_give_the_metrics_of_one(tmp_path, test_backbone, source_task):
    one, one_dir = run_inprocess(*task_overrides(source_task, tmp_path, "one", test_backbone), *SAME)
    result = cli(*task_overrides(source_task, tmp_path, "two", test_backbone), *SAME, "cluster.nproc=2")
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    two_dir = str(tmp_path / "two")
    for key in ("eval/loss", "eval/accuracy", "train/loss"):
        a, b = evals(one_dir, key), evals(two_dir, key)
        assert a.keys() == b.keys() and a
        for step in a:
            assert b[step] == pytest.approx(a[step], abs=2e-3), (key, step)
    import json

    summary = json.load(open(os.path.join(two_dir, "summary.json")))
    assert summary["world_size"] == 2 and summary["trainable_params"] == one["trainable_params"]
    assert "method=lora best eval/accuracy=" in result.stdout  # the one-line summary


def _kill_tree(proc):
    parent = psutil.Process(proc.pid)
    for p in parent.children(recursive=True) + [parent]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)


def test_killed_run_resumes_and_continues_as_if_uninterrupted(tmp_path, test_backbone, source_task):
    extra = ["method=adapter", "trainer.max_steps=40", "trainer.eval_every=10", "trainer.checkpoint_every=10",
             "trainer.log_every=1"]
    args = [*task_overrides(source_task, tmp_path, "killed", test_backbone), *extra]
    env = dict(os.environ)
    env.pop("WANDB_MODE", None)
    proc = subprocess.Popen([sys.executable, "-m", "launch.finetune", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    run_dir = tmp_path / "killed"
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "latest").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    _kill_tree(proc)
    killed_at = max(m["step"] for m in metrics(str(run_dir)))
    assert killed_at < 40
    result = cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout
    steps = [m["step"] for m in metrics(str(run_dir)) if "train/loss" in m]
    assert steps == list(range(1, 41))  # lines past the checkpoint were dropped, none repeated or missing
    reference, ref_dir = run_inprocess(*task_overrides(source_task, tmp_path, "reference", test_backbone), *extra)
    for key in ("train/loss", "eval/loss"):
        a, b = evals(ref_dir, key), evals(str(run_dir), key)
        assert a.keys() == b.keys()
        for step in a:
            assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), (key, step)


def test_sweep_makes_one_run_per_value_and_compare_reads_them(tmp_path, test_backbone, source_task, capsys):
    result = cli("-m", *task_overrides(source_task, tmp_path, "sweep", test_backbone), "method=bitfit,lora",
                 "trainer.max_steps=4", "trainer.eval_every=2")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [str(tmp_path / "sweep-0"), str(tmp_path / "sweep-1")]
    import json

    assert [json.load(open(os.path.join(r, "summary.json")))["method"] for r in runs] == ["bitfit", "lora"]
    from launch.compare import main as compare

    assert compare([*runs, "--out", str(tmp_path / "cmp.png")]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines() if line.strip()}
    assert "bitfit" in rows["method"] and "lora" in rows["method"]
    assert "@" in rows["best eval/accuracy"] and "eval/accuracy" in out and "trainable %" in rows
    assert os.path.getsize(tmp_path / "cmp.png") > 1000
