"""The one object the trainer talks to: fans each call out to JSONL (always), TensorBoard and
wandb, keeps steps monotonic, and carries what a checkpoint must remember (wandb run id, step).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from .config import TrackerConfig
from .jsonl import NONFINITE_KEY, JSONLTracker, split_nonfinite

log = logging.getLogger(__name__)


class Tracker:
    """Fan-out over accelerate GeneralTrackers. Build it with `build_tracker`."""

    def __init__(self, backends: list, run_dir: Path, last_step: Optional[int], wandb_run_id: Optional[str],
                 wandb_mode: Optional[str] = None):
        self.backends = backends
        self.run_dir = Path(run_dir)
        self.last_step = last_step
        self.wandb_run_id = wandb_run_id
        self.wandb_mode = wandb_mode
        self._closed = False

    def _each(self, method: str, *args, **kwargs) -> None:
        """JSONL failures raise (it is the record of truth); a dashboard failure disables that
        dashboard with one error line instead of killing a long training run."""
        for backend in list(self.backends):
            try:
                getattr(backend, method)(*args, **kwargs)
            except Exception as e:
                if backend.name == "jsonl":
                    raise
                log.error("tracker %s failed in %s (%s: %s); disabling it for this run",
                          backend.name, method, type(e).__name__, e)
                self.backends.remove(backend)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log scalars at `step`. Keys should carry their group: train/..., eval/...

        Several calls at the same step are fine (train and eval); a step lower than one already
        logged is dropped with a warning, so no dashboard ever sees time go backwards.
        """
        step = int(step)
        if self.last_step is not None and step < self.last_step:
            log.warning("tracker: step %d < last logged step %d; dropped %s", step, self.last_step, sorted(metrics))
            return
        self.last_step = step
        self._each("log", dict(metrics), step=step)

    def log_text(self, key: str, text: str, step: int) -> None:
        """A string at `step` (TensorBoard text tab, wandb history, a JSONL field)."""
        self.log({key: str(text)}, step)

    def summary(self, values: dict[str, Any]) -> None:
        """Final/best numbers: merged into <run_dir>/summary.json and the wandb run summary."""
        path = self.run_dir / "summary.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        clean, flags = split_nonfinite(values)
        current.update(clean)
        if flags:
            current[NONFINITE_KEY] = {**current.get(NONFINITE_KEY, {}), **flags}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(current, indent=2, sort_keys=True, allow_nan=False) + "\n")
        os.replace(tmp, path)
        for backend in self.backends:
            if hasattr(backend, "summary"):
                backend.summary(values)

    def state(self) -> dict:
        """What the trainer stores in the checkpoint's client state and passes back as
        `resume_state` to build_tracker on resume."""
        return {"wandb_run_id": self.wandb_run_id, "last_step": self.last_step}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._each("finish")

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullTracker(Tracker):
    """What non-main ranks get: same interface, does nothing, writes nothing."""

    def __init__(self):
        super().__init__([], Path("."), None, None)

    def log(self, metrics, step):
        pass

    def summary(self, values):
        pass

    def state(self) -> dict:
        return {}


def _resume_step(resume_state: Optional[dict]) -> Optional[int]:
    """The checkpoint's step: `step` if the trainer put it there, else our own `last_step`."""
    if resume_state is None:
        return None
    for key in ("step", "last_step"):
        if resume_state.get(key) is not None:
            return int(resume_state[key])
    return None


def build_tracker(cfg, run_dir: str | os.PathLike, run_name: str, config_dict: Optional[dict],
                  resume_state: Optional[dict] = None, is_main: bool = True) -> Tracker:
    """Open every configured backend for `run_dir`.

    cfg: TrackerConfig, dict or OmegaConf node (conf/tracker/*.yaml).
    config_dict: the resolved run config (TensorBoard hparams, wandb config).
    resume_state: None for a fresh run; on resume, the dict `Tracker.state()` returned when the
        checkpoint was saved (the trainer may add "step": the checkpoint's global step). Lines and
        events logged after that step are dropped and the same wandb run id is reused.
    is_main: only the main rank tracks; other ranks get a NullTracker.
    """
    cfg = TrackerConfig.from_any(cfg)
    if not is_main:
        return NullTracker()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_step = _resume_step(resume_state)
    resuming = resume_state is not None
    if resuming and resume_step is None:
        log.warning("tracker: resuming without a stored step; appending to existing logs as they are")

    backends: list = []
    try:
        jsonl = JSONLTracker(run_dir, resume_step=resume_step if resuming else None)
        if resuming and resume_step is None:
            jsonl.resume_step = 2**63 - 1  # keep everything, do not set the old file aside
        jsonl.start()
        backends.append(jsonl)

        if "tensorboard" in cfg.backends:
            from .tensorboard import TBTracker
            tb = TBTracker(run_dir, resume_step=resume_step)
            tb.start()
            backends.append(tb)
            if not resuming and config_dict:
                tb.store_init_configuration(config_dict)

        wandb_id = wandb_mode = None
        if "wandb" in cfg.backends:
            from .wandb_mode import resolve_wandb_mode
            wandb_mode, why = resolve_wandb_mode(cfg.wandb_mode)
            log.info("tracker: wandb mode %s (%s)", wandb_mode, why)
            if wandb_mode != "disabled":
                from .wandb_tracker import WandbTracker
                wb = WandbTracker(run_dir, run_name, cfg.project, cfg.entity, cfg.tags, wandb_mode,
                                  (resume_state or {}).get("wandb_run_id"), config_dict)
                wb.start()
                wandb_id = wb.run_id
                backends.append(wb)
    except BaseException:
        for backend in reversed(backends):  # do not leave open files/writers behind
            try:
                backend.finish()
            except Exception:
                pass
        raise

    return Tracker(backends, run_dir, last_step=resume_step, wandb_run_id=wandb_id, wandb_mode=wandb_mode)
