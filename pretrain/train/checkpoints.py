"""Checkpoint directory management: step dirs, an atomic `latest`, completeness, retention.

The engine writes the tensors (DeepSpeed) into a step directory; this module decides which
directory, marks it complete only after every rank finished, and picks what to resume from.

  checkpoints/step_000500/...          DeepSpeed files + client state
  checkpoints/step_000500/complete.json  file sizes of everything above, written last by rank 0
  checkpoints/latest                   "step_000500", replaced atomically after complete.json

A directory without complete.json, or whose files no longer match it (truncated, deleted), is
never resumed from: the newest complete one before it is used, with a warning naming both.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass

COMPLETE_NAME = "complete.json"
LATEST_NAME = "latest"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")


class ResumeError(ValueError):
    """A run that cannot be resumed safely (user-facing, one line)."""


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _file_sizes(directory: str) -> dict[str, int]:
    sizes = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            if name == COMPLETE_NAME:
                continue
            path = os.path.join(root, name)
            sizes[os.path.relpath(path, directory)] = os.path.getsize(path)
    return sizes


def mark_complete(step_dir: str, step: int) -> None:
    """Rank 0, after a barrier following the save: record every file's size, then publish."""
    record = {"step": step, "files": _file_sizes(step_dir)}
    tmp = os.path.join(step_dir, COMPLETE_NAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(step_dir, COMPLETE_NAME))
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
    path = os.path.join(step_dir, COMPLETE_NAME)
    try:
        with open(path) as f:
            record = json.load(f)
        expected = dict(record["files"])
    except FileNotFoundError:
        return Verdict(False, "never completed (no complete.json: the save was interrupted)")
    except (json.JSONDecodeError, KeyError, TypeError):
        return Verdict(False, f"{COMPLETE_NAME} is unreadable")
    for rel, size in expected.items():
        full = os.path.join(step_dir, rel)
        if not os.path.exists(full):
            return Verdict(False, f"{rel} is missing")
        actual = os.path.getsize(full)
        if actual != size:
            return Verdict(False, f"{rel} has {actual} bytes, expected {size} (truncated?)")
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
