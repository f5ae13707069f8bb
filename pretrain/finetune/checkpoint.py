"""Fine-tuning checkpoints and task weights.

  <run>/checkpoints/step_000120/   trainable.safetensors, optimizer.pt, state.json
  <run>/checkpoints/latest         "step_000120", replaced atomically after the save
  <run>/task/                      task_weights.safetensors + task.json: the best model so far

A checkpoint holds only what training changes (the trainable tensors in fp32, optimizer and
schedule state, the loop's counters): the frozen backbone is rebuilt from model.path. Each
directory is written under a temporary name and renamed into place, so one that exists is
complete. DDP replicas are identical, so only the main process writes.
`task/` is what a user keeps per task: for parameter-efficient methods only the task-specific
tensors (mask tuning: bits), for full fine-tuning the whole model.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from pretrain.train.checkpoint_manager import LATEST_NAME, CheckpointManager, ResumeError, step_dir_name

TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"
TASK_DIR = "task"
TASK_WEIGHTS = "task_weights.safetensors"
TASK_META = "task.json"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")


@dataclass
class FinetuneState:
    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0          # global batches of `epoch` already trained on
    best: Optional[float] = None       # best validation value of the main metric
    best_step: Optional[int] = None
    bad_evals: int = 0                 # validations since the last improvement (early stopping)
    evals: int = 0
    tracker: dict = field(default_factory=dict)
    config_hash: str = ""
    world_size: int = 1


def _write_atomically(final: Path, write) -> None:
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", torch.float32, copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run_dir: str, model, optimizer, scheduler, state: FinetuneState, keep: int) -> str:
    root = Path(run_dir) / "checkpoints"
    final = root / step_dir_name(state.step)

    def write(d: Path) -> None:
        save_file(trainable_state(model), str(d / TRAINABLE))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, d / OPTIMIZER)
        (d / STATE).write_text(json.dumps(asdict(state), indent=2) + "\n")

    _write_atomically(final, write)
    CheckpointManager(run_dir).publish_latest(str(final))  # the same atomic `latest` as pretraining
    prune(root, keep)
    return str(final)


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), root / n) for n in os.listdir(root) if (m := _STEP_DIR.match(n)) and (root / n / STATE).is_file()]
    return sorted(found, reverse=True)


def prune(root: Path, keep: int) -> None:
    for _, path in step_dirs(root)[keep:]:
        shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(run_dir: str) -> Optional[str]:
    """The checkpoint to resume from: the one `latest` names, else the newest complete one."""
    root = Path(run_dir) / "checkpoints"
    latest = root / LATEST_NAME
    if latest.is_file():
        named = root / latest.read_text().strip()
        if (named / STATE).is_file():
            return str(named)
    found = step_dirs(root)
    return str(found[0][1]) if found else None


def load_checkpoint(step_dir: str, model, optimizer, scheduler) -> FinetuneState:
    d = Path(step_dir)
    try:
        state = FinetuneState(**json.loads((d / STATE).read_text()))
        tensors = load_file(str(d / TRAINABLE))
        opt = torch.load(d / OPTIMIZER, map_location="cpu", weights_only=False)
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        raise ResumeError(f"{step_dir}: unreadable checkpoint ({str(e).splitlines()[0]}); use run.fresh=true to start over") from None
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(tensors) != expected:
        raise ResumeError(f"{step_dir}: its trainable tensors do not match this run's model and method; use run.fresh=true")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    return state


def save_task(run_dir: str, tensors: dict[str, torch.Tensor], meta: dict) -> int:
    """Write <run>/task/ (task weights + task.json); returns the bytes of the weights file."""
    final = Path(run_dir) / TASK_DIR

    def write(d: Path) -> None:
        save_file(tensors, str(d / TASK_WEIGHTS))
        (d / TASK_META).write_text(json.dumps(meta, indent=2, default=str) + "\n")

    _write_atomically(final, write)
    return (final / TASK_WEIGHTS).stat().st_size


def read_task(task_dir: str) -> tuple[dict, dict[str, torch.Tensor]]:
    d = Path(task_dir)
    if not (d / TASK_META).is_file() or not (d / TASK_WEIGHTS).is_file():
        raise ResumeError(f"{task_dir}: no {TASK_META} + {TASK_WEIGHTS} (is it a fine-tuning run's task/ directory?)")
    return json.loads((d / TASK_META).read_text()), load_file(str(d / TASK_WEIGHTS))
