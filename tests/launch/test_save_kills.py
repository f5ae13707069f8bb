"""kill -9 of both ranks at 30 seeded moments spread over a checkpoint save (DeepSpeed's file
writes, our meta file, the `latest` publish, retention); every relaunch resumes from the new
checkpoint if it was published, else the previous one, with the losses of an uninterrupted run.

The driver (save_kills.py) forks the real rank processes from one warm parent so 30 relaunches
fit the suite's budget; bench/save_kills.py runs it longer and for every layout.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KILLS = 30


def test_kill9_at_30_moments_inside_save_always_resumes_from_a_complete_checkpoint(tmp_path, tiny_data):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(DS_ACCELERATOR=env.get("DS_ACCELERATOR", "cpu"), OMP_NUM_THREADS="1")
    work = tmp_path / "fuzz"
    proc = subprocess.run([sys.executable, str(HERE / "save_kills.py"), "--data", tiny_data, "--work", str(work),
                           "--kills", str(KILLS), "--seed", "20261201", "--layout", "zero2-bf16"],
                          env=env, cwd=HERE.parents[1], capture_output=True, text=True, timeout=900)
    report = json.loads((work / "report.json").read_text())
    assert report["failures"] == [], "\n".join(report["failures"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    kills = [a for a in report["attempts"] if "killed_at" in a]
    assert len(kills) == KILLS and report["attempts"][-1]["result"] == "finished"
    # Spread over the whole save: every distinct event once before any repeats, on both ranks,
    # before and after the `latest` publish, inside DeepSpeed's writes, our meta and retention.
    assert report["positions_hit"] == min(KILLS, report["positions"])
    keys = {a["killed_at"]["key"].split(":")[0] for a in kills}
    assert {"create", "part", "written", "open", "fsync", "replace-before", "replace-after", "unlink"} <= keys
    assert {a["killed_at"]["rank"] for a in kills} == {0, 1}
    assert {a["published"] for a in kills} == {True, False}
