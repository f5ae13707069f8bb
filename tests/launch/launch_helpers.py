"""Helpers for end-to-end launches: the real `pretrain-launch` CLI, real torchrun, gloo, DeepSpeed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil

COMMON = [
    "model=bert-tiny", "data.micro_batch_size=8", "data.num_workers=1", "data.max_seq_len=64",
    "trainer.log_every=1", "trainer.eval_every=0", "trainer.progress=false", "trainer.export_on_finish=false",
    "tracker=none", "optim.lr=1e-3", "schedule.warmup_steps=2",
]


def launch_cmd(root: str, data: str, name: str, *overrides: str) -> list[str]:
    """`data`: a prepared directory, or None when the overrides name the data (data.sources)."""
    return [sys.executable, "-m", "launch.train", f"run.root={root}", f"run.name={name}",
            *([f"data.path={data}"] if data else []), *COMMON, *overrides]


def run_env() -> dict:
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu")
    env.pop("WANDB_MODE", None)
    return env


def launch(root, data, name, *overrides, timeout=300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(launch_cmd(root, data, name, *overrides), capture_output=True, text=True,
                          timeout=timeout, env=env or run_env())


def start(root, data, name, *overrides) -> subprocess.Popen:
    return subprocess.Popen(launch_cmd(root, data, name, *overrides), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=run_env(), start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and everything under it (torchrun and the ranks): a node dying."""
    parent = psutil.Process(proc.pid)
    victims = parent.children(recursive=True) + [parent]
    for p in victims:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    psutil.wait_procs(victims, timeout=30)


def wait_for(predicate, timeout=240, what="condition", proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"launch ended (code {proc.returncode}) before {what}:\n{out[-3000:]}\n{err[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().endswith("}")]


def losses(run_dir: str) -> dict[int, float]:
    return {m["step"]: m["train/loss"] for m in metrics(run_dir) if "train/loss" in m}


def latest(run_dir: str) -> str | None:
    path = os.path.join(run_dir, "checkpoints", "latest")
    return open(path).read().strip() if os.path.exists(path) else None

