"""Helpers for the fine-tuning tests: compose the real config, run in-process or via the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

# Small and fast: fp32 (bf16 autocast is slower than fp32 for tiny matrices on CPU), no dashboards.
FAST = ["precision=fp32", "trainer.progress=false", "tracker=none", "trainer.max_seq_len=32",
        "trainer.batch_size=16", "trainer.eval_batch_size=64", "trainer.log_every=5"]


def compose_cfg(*overrides: str):
    from pretrain.finetune.config import validate

    with initialize_config_module(config_module="conf", version_base="1.3"):
        raw = compose(config_name="finetune", overrides=list(overrides))
    return validate(OmegaConf.create(OmegaConf.to_container(raw)))


def task_overrides(files: dict, root, name: str, model: str) -> list[str]:
    out = [f"model.path={model}", f"run.root={root}", f"run.name={name}",
           f"task.train={files['train']}", f"task.validation={files['validation']}"]
    if "test" in files:
        out.append(f"task.test={files['test']}")
    return out + FAST


def run_inprocess(*overrides: str) -> tuple[dict, str]:
    """pretrain-finetune's own path for one process: validate, run dir, finetune()."""
    from launch.rundir import prepare_run_dir
    from pretrain.finetune.train import finetune

    cfg = compose_cfg(*overrides)
    run_dir = prepare_run_dir(cfg)
    return finetune(cfg, run_dir, log=lambda *a, **k: None), run_dir


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu")
    env.pop("WANDB_MODE", None)
    return subprocess.run([sys.executable, "-m", "launch.finetune", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def evals(run_dir: str, key: str) -> dict[int, float]:
    return {m["step"]: m[key] for m in metrics(run_dir) if key in m}
