"""Training phases (`trainer.phases`): one run whose sequence length, batch, masking and source
weights change on schedule, keeping the optimizer state, the lr schedule and the data cursor.

A phase is `{name, steps | tokens, set: {key: value}}`; `set` holds the settings that change at
its start, nested (`{data: {max_seq_len: 512}}`) or dotted (`{data.max_seq_len: 512}`). Settings
accumulate: phase k runs with the run's config plus the `set` of phases 0..k, so a later phase
names only what it changes. Every phase but the last has a length: `steps`, or `tokens` (real
tokens consumed); the last runs until the run's budget ends. Which phase a step belongs to
follows from the TrainState (phase index, where it started), which the checkpoint holds, so a
resume on either side of a boundary is exact.

Only what can change without new weights or a new engine may be set (PHASE_KEYS, the one list):
each phase's whole config is validated up front as if it were the run's own.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

PHASE_KEYS = (
    "data.max_seq_len", "data.micro_batch_size", "data.source_weights", "data.source_temperature",
    "objective.mlm_probability", "objective.masking", "objective.mask_token_prob", "objective.random_token_prob",
    "objective.span_geometric_p", "objective.span_max_length",
    "schedule.name", "schedule.warmup_steps", "schedule.warmup_fraction", "schedule.min_lr_ratio",
    "schedule.decay_fraction", "optim.lr",
    "model.global_rope_theta", "model.local_rope_theta", "model.local_attention",
)
# Keys that make the lr schedule run in segments, one per phase (`Phases.segment`).
SCHEDULE_KEYS = tuple(k for k in PHASE_KEYS if k.startswith("schedule.")) + ("optim.lr",)
# Model keys: read by the layers at every forward (ModernBERT's rotary and local window).
MODEL_KEYS = tuple(k for k in PHASE_KEYS if k.startswith("model."))
MODEL_KEYS_ARCHS = ("modernbert",)
# Keys whose change re-cuts documents into examples: the data cursor moves to whole documents.
SEGMENTATION_KEYS = ("data.max_seq_len",)
# Keys a pipeline cannot change: its stages exchange activations of one fixed shape.
SHAPE_KEYS = ("data.max_seq_len", "data.micro_batch_size")


@dataclass
class PhaseConfig:
    name: Optional[str] = None       # shown in logs, status and metrics; default "phase<k>"
    steps: Optional[int] = None      # the phase's length in optimizer steps ...
    tokens: Optional[int] = None     # ... or in real tokens consumed (not both); none for the last phase
    set: dict[str, Any] = field(default_factory=dict)


class PhaseError(ValueError):
    """A phase that cannot run; the message names the key (`trainer.phases[k]...`)."""


def flatten(mapping: Mapping, prefix: str = "") -> dict:
    """Nested and dotted keys -> {"data.max_seq_len": 512, "data.source_weights": {...}}."""
    out = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted != "data.source_weights":
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def phase_name(phase, index: int) -> str:
    return str(phase.name) if phase.name else f"phase{index + 1}"


def changes(cfg: DictConfig, index: int) -> dict:
    """The dotted settings phase `index` sets (its own `set` only)."""
    return flatten(OmegaConf.to_container(cfg.trainer.phases[index].set, resolve=True))


def phase_config(cfg: DictConfig, index: int) -> DictConfig:
    """The run's config as phase `index` runs it: the `set` of phases 0..index applied in order."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container["trainer"]["phases"] = []
    for k in range(index + 1):
        for key, value in changes(cfg, k).items():
            _apply(container, key, value, k)
    return OmegaConf.create(container)


def _apply(container: dict, key: str, value: Any, k: int) -> None:
    data = container["data"]
    if key == "data.source_weights":
        names = [s["name"] for s in data["sources"]]
        if not data["sources"]:
            raise PhaseError(f"config key 'trainer.phases[{k}].set.data.source_weights' needs data.sources (a mixture)")
        if not isinstance(value, Mapping):
            raise PhaseError(f"config key 'trainer.phases[{k}].set.data.source_weights' = {value!r}; "
                             "expected {source name: weight}")
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise PhaseError(f"config key 'trainer.phases[{k}].set.data.source_weights.{unknown[0]}': no source of "
                             f"that name (data.sources: {names})")
        for s in data["sources"]:
            s["weight"] = value.get(s["name"], 0.0)   # a source left out is not read in this phase
        data["source_temperature"] = None
        return
    if key == "data.source_temperature" and value is not None:
        for s in data["sources"]:
            s["weight"] = None
    group, name = key.split(".", 1)
    container[group][name] = value


def check_phases(cfg: DictConfig, validate) -> None:
    """Every phase's keys, lengths and whole config (validated as a run's own); raises PhaseError."""
    phases = cfg.trainer.phases
    for k, phase in enumerate(phases):
        where = f"trainer.phases[{k}]"
        if phase.name is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]+", str(phase.name)):
            raise PhaseError(f"config key '{where}.name' = {phase.name!r}; use letters, digits and _.- only")
        last = k == len(phases) - 1
        lengths = [key for key in ("steps", "tokens") if phase[key] is not None]
        if last and lengths:
            raise PhaseError(f"config key '{where}.{lengths[0]}': the last phase runs until the run's budget ends "
                             f"(trainer.max_steps / max_tokens / max_time); drop its length")
        if not last and len(lengths) != 1:
            raise PhaseError(f"config key '{where}': set exactly one of steps or tokens (its length)"
                             + (", not both" if lengths else ""))
        if not last and phase[lengths[0]] <= 0:
            raise PhaseError(f"config key '{where}.{lengths[0]}' = {phase[lengths[0]]}; must be > 0")
        for key in changes(cfg, k):
            if key not in PHASE_KEYS:
                raise PhaseError(f"config key '{where}.set.{key}' cannot change in a phase; phases may set "
                                 f"{', '.join(PHASE_KEYS)}")
            if key in MODEL_KEYS and cfg.model.arch not in MODEL_KEYS_ARCHS:
                raise PhaseError(f"config key '{where}.set.{key}': model.arch={cfg.model.arch} has no such "
                                 f"setting (phases change it for {', '.join(MODEL_KEYS_ARCHS)})")
            if key == "model.local_attention" and bool(cfg.model.local_attention) != bool(changes(cfg, k)[key]):
                raise PhaseError(f"config key '{where}.set.{key}' = {changes(cfg, k)[key]}: which layers are local "
                                 f"is fixed when the model is built (model.local_attention={cfg.model.local_attention});"
                                 " a phase may change a nonzero window, not turn windows on or off")
            if key in SHAPE_KEYS and cfg.parallel.pipeline_stages > 1:
                raise PhaseError(f"config key '{where}.set.{key}': the pipeline engine (parallel.pipeline_stages="
                                 f"{cfg.parallel.pipeline_stages}) is built for one batch shape; "
                                 "phases under a pipeline may change masking and source weights only")
        try:
            validate(phase_config(cfg, k))
        except ValueError as e:
            reason = str(e)[len("config: "):] if str(e).startswith("config: ") else str(e)
            raise PhaseError(f"{where} ({phase_name(phase, k)}): {reason}") from None


def rest_of_run(budget, state) -> Optional[int]:
    """The steps left of a run bounded by steps alone; None (placed by `progress_since`) otherwise."""
    if budget.max_tokens is None and budget.max_seconds is None and budget.max_steps is not None:
        return max(1, int(budget.max_steps) - state.step)
    return None


def progress_since(budget, state) -> float:
    """The fraction of what was left of the budget at `state.schedule_start` used since, in [0, 1]:
    how far a schedule segment that runs to the end of the budget is."""
    start = budget.fraction(*state.schedule_start) if state.schedule_start else 0.0
    now = budget.fraction(state.step, state.consumed_tokens, state.train_seconds)
    return min(1.0, max(0.0, (now - start) / max(1e-12, 1.0 - start)))


class Phases:
    """Which phase the next step belongs to, from the TrainState; the configs of the phases."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.phases = list(cfg.trainer.phases)
        self._configs: dict[int, DictConfig] = {}

    def __len__(self) -> int:
        return len(self.phases)

    def config(self, index: int) -> DictConfig:
        if index not in self._configs:
            self._configs[index] = phase_config(self.cfg, index)
        return self._configs[index]

    def name(self, index: int) -> str:
        return phase_name(self.phases[index], index)

    def due(self, state) -> bool:
        """Whether the step after `state.step` belongs to the next phase."""
        k = state.phase
        if k + 1 >= len(self.phases):
            return False
        p = self.phases[k]
        if p.steps is not None:
            return state.step - state.phase_start_step >= p.steps
        return state.consumed_tokens - state.phase_start_tokens >= p.tokens

    # ---------------------------------------------------------------- the lr schedule
    def segmented(self) -> bool:
        """Whether any phase sets the schedule (or optim.lr): then every phase runs its own
        segment of the schedule (its settings, accumulated as any other); otherwise the run's
        schedule spans the whole run as without phases."""
        return any(key in SCHEDULE_KEYS for k in range(len(self.phases)) for key in changes(self.cfg, k))

    def segment(self, index: int, state, budget) -> tuple:
        """(ScheduleConfig, total steps or None, lr scale) of phase `index` starting after `state`.
        Steps: the phase's own; tokens, or the last phase of a run not bounded by steps alone:
        None (placed by `progress`); the last phase of a steps-bounded run: the steps left."""
        from parallel.config import ScheduleConfig

        settings = self.config(index)
        schedule = ScheduleConfig(**{**OmegaConf.to_container(settings.schedule, resolve=True), "total_steps": None})
        phase = self.phases[index]
        if phase.steps is not None:
            total = int(phase.steps)
        elif phase.tokens is not None:
            total = None
        else:
            total = rest_of_run(budget, state)
        return schedule, total, float(settings.optim.lr) / float(self.cfg.optim.lr)

    def progress(self, state, budget) -> float:
        """How far the current phase is, in [0, 1] (for segments placed by progress)."""
        phase = self.phases[state.phase]
        if phase.tokens is not None:
            return min(1.0, (state.consumed_tokens - state.phase_start_tokens) / float(phase.tokens))
        if phase.steps is not None:
            return min(1.0, (state.step - state.phase_start_step) / float(phase.steps))
        return progress_since(budget, state)

    def model_config(self, index: int, base):
        """The ModelConfig `base` with phase `index`'s model settings."""
        from dataclasses import replace

        model = self.config(index).model
        return replace(base, **{k.split(".", 1)[1]: model[k.split(".", 1)[1]] for k in MODEL_KEYS})

    def recuts(self, old: int, new: int) -> bool:
        """Whether going from phase `old` to `new` changes how documents are cut into examples."""
        a, b = self.config(old), self.config(new)
        return any(OmegaConf.select(a, k) != OmegaConf.select(b, k) for k in SEGMENTATION_KEYS)

    def describe(self, index: int) -> str:
        sets = changes(self.cfg, index)
        length = self.phases[index]
        span = (f"{length.steps} steps" if length.steps is not None else
                f"{length.tokens} tokens" if length.tokens is not None else "until the budget ends")
        what = ", ".join(f"{k}={v}" for k, v in sets.items()) or "no changes"
        return f"phase {index + 1}/{len(self.phases)} ({self.name(index)}, {span}): {what}"

