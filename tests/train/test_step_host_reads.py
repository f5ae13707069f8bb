"""A training step through the engine reads device values on the host once: in the engine's one
reduction (which also carries the loop's numbers). Run at world 1 on CPU; on a GPU each extra
read would stall the device."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("arch, head, zero", [("bert", "sop", 0), ("modernbert", "none", 2), ("bert", "nsp", 2)])
def test_train_step_reads_the_device_only_in_its_one_reduction(tmp_path, arch, head, zero):
    out = tmp_path / "reads.json"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(HERE / "_host_reads_worker.py"), arch, head, str(zero), str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["seen"] == [], result["seen"]
    assert result["carried"] == [1.0, 2.0] and result["loss"] > 0
