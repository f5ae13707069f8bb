"""CheckpointManager: the one owner of a run's checkpoints (after torchtitan's CheckpointManager).

It decides the directory names, saves through the engine, publishes `latest` only after a save
is complete, keeps the last K, and decides what a launch resumes from:

  checkpoints/step_000500/...   DeepSpeed files + client state + parallel_meta.json (engine)
  checkpoints/latest            "step_000500", replaced atomically after the save completed

Each candidate is checked once, by `parallel.checkpoint.inspect_checkpoint` (meta written last,
every file present at its recorded size, same model shape, a layout it can load into); the
engine is then built for the chosen one and loads it without checking again. A directory whose
meta is missing (interrupted save) or whose files no longer match it (truncated, deleted) is
never resumed from: the newest good one before it is used, with a warning naming both. Step
directories newer than `latest` are saves that never finished publishing (with no `latest` at
all, nothing was ever published: the run starts over); the next save of that step clears one.

A checkpoint is never written from a non-finite state: `save` first checks every rank's weights
and optimizer state (one all-reduce) and raises NonFiniteState instead; the meta then records
`state_finite: true`. Retention keeps the newest K complete checkpoints and never deletes the
newest one whose state was checked finite. `rewind` loads the newest usable checkpoint into a
running engine (trainer.on_nonfinite=rewind).
"""
from __future__ import annotations

import os
import re
import shutil
import time
from typing import Callable, Optional

from parallel.checkpoint import CheckpointError, Layout, Resume, inspect_checkpoint, peek_checkpoint, verify_files
from parallel.topology import barrier, is_main
from pretrain.train.nonfinite import NonFiniteState

LATEST_NAME = "latest"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")


class ResumeError(ValueError):
    """A run that cannot be resumed safely (user-facing, one line)."""


def _state_finite(step_dir: str) -> bool:
    try:
        return bool(peek_checkpoint(step_dir).get("state_finite"))
    except CheckpointError:
        return False


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def is_complete(step_dir: str) -> tuple[bool, str]:
    """File-level completeness only (meta present, files at their sizes): for export and status."""
    try:
        verify_files(step_dir, peek_checkpoint(step_dir))
    except CheckpointError as e:
        return False, str(e)
    return True, ""


class CheckpointManager:
    def __init__(self, run_dir: str, keep: int = 3, log: Callable[[str], None] = print):
        self.root = os.path.join(run_dir, "checkpoints")
        self.keep = keep
        self.log = log

    # ------------------------------------------------------------------ listing
    def step_dirs(self) -> list[tuple[int, str]]:
        """(step, path) of every step directory, newest first."""
        if not os.path.isdir(self.root):
            return []
        found = []
        for name in os.listdir(self.root):
            m = _STEP_DIR.match(name)
            if m and os.path.isdir(os.path.join(self.root, name)):
                found.append((int(m.group(1)), os.path.join(self.root, name)))
        return sorted(found, reverse=True)

    def latest_step(self) -> Optional[int]:
        path = os.path.join(self.root, LATEST_NAME)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            m = _STEP_DIR.match(f.read().strip())
        if m is None:
            self.log(f"warning: {path} does not name a step directory; ignoring it")
            return None
        return int(m.group(1))

    def _published(self) -> list[str]:
        """Step directories not newer than `latest`, newest first. Without any `latest` file
        nothing was ever published; an unreadable one counts every directory (then each is
        checked)."""
        if not os.path.exists(os.path.join(self.root, LATEST_NAME)):
            return []
        latest = self.latest_step()
        return [path for step, path in self.step_dirs() if latest is None or step <= latest]

    def complete(self) -> list[str]:
        """Published step directories whose files are complete, newest first (no layout check)."""
        out = []
        for path in self._published():
            ok, reason = is_complete(path)
            if ok:
                out.append(path)
            else:
                self.log(f"warning: not using {path}: {reason}")
        return out

    # ------------------------------------------------------------------ resume
    def _usable(self, signature: str, layout: Layout) -> tuple[list[Resume], list[str]]:
        plans, refusals = [], []
        for path in self._published():
            try:
                plans.append(inspect_checkpoint(path, signature, layout))
            except CheckpointError as e:
                refusals.append(str(e))
                self.log(f"warning: not resuming from {path}: {e}")
        return plans, refusals

    def plan_resume(self, signature: str, layout: Layout) -> list[Resume]:
        """Checkpoints this layout can resume from, best first; [] for a run with none at all.

        Raises ResumeError when step directories exist but none is usable: a run is never
        restarted silently from scratch (run.fresh=true does that on purpose).
        """
        if not os.path.exists(os.path.join(self.root, LATEST_NAME)):
            for _, path in self.step_dirs():  # the first save was interrupted before it published
                self.log(f"warning: {path}: a save that was never published (no `latest`); starting from step 0")
            return []
        plans, refusals = self._usable(signature, layout)
        if not plans and self.step_dirs():
            reason = refusals[0] if refusals else "no published checkpoint (no `latest`)"
            raise ResumeError(f"{self.root} has step directories but none is usable ({reason}); refusing to "
                              "start over silently (relaunch with run.fresh=true to start a new run)")
        # The engine is set up for the first plan's loading mode; only same-mode fallbacks work.
        return [p for p in plans if p.mode == plans[0].mode] if plans else []

    def load(self, engine, plans: list[Resume]) -> Optional[dict]:
        """Load the newest plan that loads; a corrupt one is skipped with a warning, never silently."""
        for i, plan in enumerate(plans):
            try:
                return engine.load(plan)
            except CheckpointError as e:
                if i + 1 < len(plans):
                    self.log(f"warning: {e}; falling back to {plans[i + 1].path}")
                else:
                    raise
        return None

    def rewind(self, engine) -> Optional[tuple[int, str]]:
        """All ranks call: load the newest usable checkpoint (checked finite when saved, if any
        is) into the running `engine`; returns (its step, its path), or None when there is none."""
        plans, _ = self._usable(engine.signature, engine.layout)
        verified = [p for p in plans if p.meta.get("state_finite")]
        plans = verified or plans
        if not plans:
            return None
        for i, plan in enumerate(plans):
            try:
                engine.load(plan)
                return int(_STEP_DIR.match(os.path.basename(plan.path)).group(1)), plan.path
            except CheckpointError as e:
                if i + 1 == len(plans):
                    raise
                self.log(f"warning: {e}; falling back to {plans[i + 1].path}")
        return None

    # ------------------------------------------------------------------ save
    def save(self, engine, step: int, client_state: dict) -> str:
        """All ranks call: check the state is finite, the engine writes the step directory, then
        rank 0 publishes and prunes. Raises NonFiniteState (on every rank) and writes nothing
        when any rank's weights or optimizer state are not finite."""
        step_dir = os.path.join(self.root, step_dir_name(step))
        t0 = time.perf_counter()
        if not engine.state_is_finite():
            raise NonFiniteState(f"step {step}: weights or optimizer state are not finite")
        latest = self.latest_step()
        if is_main() and os.path.isdir(step_dir) and (latest is None or step > latest):
            # Left by a save that was killed before publishing: never part of a checkpoint.
            shutil.rmtree(step_dir)
        barrier()
        # The phase is in the meta too: the export reads it without DeepSpeed (the model settings it ran with).
        phase = int(client_state.get("train_state", {}).get("phase", 0))
        engine.save(step_dir, client_state, meta={"state_finite": True, "phase": phase})
        barrier()
        if is_main():
            self.publish_latest(step_dir)
            self.prune()
        barrier()
        self.log(f"saved checkpoint {step_dir} in {time.perf_counter() - t0:.1f}s")
        return step_dir

    def publish_latest(self, step_dir: str) -> None:
        """Point `latest` at `step_dir` atomically (after every rank finished saving)."""
        tmp = os.path.join(self.root, LATEST_NAME + ".tmp")
        with open(tmp, "w") as f:
            f.write(os.path.basename(step_dir))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.root, LATEST_NAME))

    def prune(self) -> list[str]:
        """Delete all but the newest `keep` complete step directories (and incomplete older ones);
        the newest one whose state was checked finite is always kept."""
        removed = []
        complete_seen = 0
        latest = self.latest_step()
        finite_kept = False
        for step, path in self.step_dirs():
            if step == latest or is_complete(path)[0]:
                complete_seen += 1
                finite = _state_finite(path)
                if complete_seen <= self.keep or (finite and not finite_kept):
                    finite_kept = finite_kept or finite
                    continue
            elif latest is not None and step > latest:
                continue  # possibly being written right now
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed
