"""bench/gpu_check.sh in GPU mode on a machine without CUDA fails at once (exit 98) instead of
checking nothing, and leaves no watchdog `sleep` behind; its CPU dry run passes every step."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_gpu_mode_without_cuda_exits_nonzero_and_cleans_up(tmp_path):
    started = time.time()
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=str(ROOT / ".venv" / "bin" / "python"))
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 98, proc.stdout[-2000:] + proc.stderr[-2000:]
    steps = (tmp_path / "out" / "steps.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in steps[1:]] == ["environment", "cuda"]
    assert steps[2].split("\t")[1] != "0"
    time.sleep(0.5)
    # A killed sleep may linger as a zombie until the container's init reaps it: not running.
    sleepers = [p for p in psutil.process_iter(["name", "cmdline", "create_time", "status"])
                if p.info["name"] == "sleep" and (p.info["create_time"] or 0) >= started - 1
                and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert not sleepers, [p.info["cmdline"] for p in sleepers]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU rehearsal of the GPU check")
def test_cpu_dry_run_runs_every_step_and_writes_the_results(tmp_path):
    """`bash bench/gpu_check.sh --cpu-dry-run`: the GPU check's steps at tiny sizes, all passing, the
    kill -9 run resumed, both model families compared with transformers, the attention paths timed,
    one JSON and one table written (the budget raised from 170 s for a loaded CI machine)."""
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, BUDGET_S="360")
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu-dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, (out / "gpu_check.log").read_text()[-4000:] if (out / "gpu_check.log").exists() else proc.stderr
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:]]
    assert {name for name, rc, _ in steps if rc != "0"} == set()
    names = [name for name, _, _ in steps]
    for expected in ("pytest-cuda", "train-32-kill-9", "train-32-resume", "fill-mask", "compare-bert-tiny-64",
                     "compare-modernbert-tiny-64", "attention", "results"):
        assert expected in names, names
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["resumed"] and result["runs"]["kill128"]["steps"] == 12
    assert {(c["preset"], c["impl"]) for c in result["compare"]} >= {("modernbert-tiny", "transformers"),
                                                                     ("modernbert-tiny", "ours")}
    assert [r["model"] for r in result["attention"]["rows"]].count("modernbert-tiny") == 2
    table = (out / "gpu_check.md").read_text()
    assert "| ours | modernbert-tiny | 64 |" in table and "varlen step s" in table
