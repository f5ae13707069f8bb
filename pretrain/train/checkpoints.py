"""Checkpoint directory management: step dirs, an atomic `latest`, what to resume from, retention.

The engine writes a step directory (DeepSpeed files + `parallel_meta.json`, written last by
rank 0 with every file's size: see parallel/checkpoint.py). This module decides the directory
name, publishes `latest` only after the save is complete, and picks what to resume from:

  checkpoints/step_000500/...   DeepSpeed files + client state + parallel_meta.json
  checkpoints/latest            "step_000500", replaced atomically after the save completed

A directory whose meta is missing (interrupted save) or whose files no longer match it
(truncated, deleted) is never resumed from: the newest complete one before it is used, with a
warning naming both.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass

from parallel.checkpoint import CheckpointError, peek_checkpoint, verify_files

LATEST_NAME = "latest"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")


class ResumeError(ValueError):
    """A run that cannot be resumed safely (user-facing, one line)."""


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def publish_latest(step_dir: str) -> None:
    """Rank 0, after every rank finished saving: point `latest` at `step_dir` atomically."""
    root = os.path.dirname(step_dir)
    tmp = os.path.join(root, LATEST_NAME + ".tmp")
    with open(tmp, "w") as f:
        f.write(os.path.basename(step_dir))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(root, LATEST_NAME))


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""


def verify(step_dir: str) -> Verdict:
    try:
        verify_files(step_dir, peek_checkpoint(step_dir))
    except CheckpointError as e:
        return Verdict(False, str(e))
    return Verdict(True)


def step_dirs(checkpoint_root: str) -> list[tuple[int, str]]:
    """(step, path) of every step directory, newest first."""
    if not os.path.isdir(checkpoint_root):
        return []
    found = []
    for name in os.listdir(checkpoint_root):
        m = _STEP_DIR.match(name)
        if m and os.path.isdir(os.path.join(checkpoint_root, name)):
            found.append((int(m.group(1)), os.path.join(checkpoint_root, name)))
    return sorted(found, reverse=True)


def resume_candidates(checkpoint_root: str, warn=print) -> list[str]:
    """Complete checkpoints to try, best first: `latest`, then older ones.

    Steps newer than `latest` are ignored: their save never finished publishing.
    """
    latest_step = None
    latest_path = os.path.join(checkpoint_root, LATEST_NAME)
    if os.path.isfile(latest_path):
        with open(latest_path) as f:
            m = _STEP_DIR.match(f.read().strip())
        if m:
            latest_step = int(m.group(1))
        else:
            warn(f"warning: {latest_path} does not name a step directory; ignoring it")
    out = []
    for step, path in step_dirs(checkpoint_root):
        if latest_step is not None and step > latest_step:
            continue
        verdict = verify(path)
        if verdict.ok:
            out.append(path)
        else:
            warn(f"warning: not resuming from {path}: {verdict.reason}")
    return out


def prune(checkpoint_root: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` complete step directories (and incomplete older ones)."""
    removed = []
    complete_seen = 0
    latest = None
    latest_path = os.path.join(checkpoint_root, LATEST_NAME)
    if os.path.isfile(latest_path):
        with open(latest_path) as f:
            latest = f.read().strip()
    for step, path in step_dirs(checkpoint_root):
        if os.path.basename(path) == latest or verify(path).ok:
            complete_seen += 1
            if complete_seen <= keep:
                continue
        elif latest is not None and step > int(latest.split("_")[1]):
            continue  # possibly being written right now
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
