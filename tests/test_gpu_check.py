"""bench/gpu_check.sh in GPU mode on a machine without CUDA fails at once (exit 98) instead of
checking nothing, and leaves no watchdog `sleep` behind."""
import os
import subprocess
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
