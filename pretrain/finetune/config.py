"""Typed schema of the fine-tuning config (`conf/finetune.yaml` + groups task, method, optim,
schedule, precision, tracker) and its validation: a wrong key or value is one ConfigError line.

Defaults live in conf/; the dataclasses here are the schema. Each method has its own schema
(METHODS), so a key that belongs to another method (`method.r` with method=adapter) is refused.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from parallel.config import OptimConfig, PrecisionConfig, ScheduleConfig
from pretrain.tracking.config import TrackerConfig
from pretrain.train.config import ClusterConfig, ConfigError, RunConfig, check_run_name

TASK_TYPES = ("classification", "pair_classification", "regression", "token_classification")
FORMATS = ("auto", "csv", "tsv", "jsonl", "parquet", "conll")
# Main metric per task type (first = what `metric: auto` picks); all are higher-is-better.
METRICS = {
    "classification": ("accuracy", "f1", "matthews"),
    "pair_classification": ("accuracy", "f1", "matthews"),
    "regression": ("pearson", "spearman"),
    "token_classification": ("f1", "accuracy"),
}
Column = Union[str, int]


@dataclass
class TaskConfig:
    type: str = "classification"
    train: str = "???"
    validation: str = "???"
    test: Optional[str] = None
    format: str = "auto"
    header: bool = True
    quoting: str = "auto"                   # auto | none | standard
    text_column: Any = "text"               # name or 0-based index
    text_pair_column: Any = None
    label_column: Any = "label"
    labels: Optional[list[str]] = None      # fixed label order (ids); None = sorted training labels
    metric: str = "auto"
    on_bad_row: str = "skip"                # skip | error

    @property
    def is_pair(self) -> bool:
        return self.text_pair_column is not None


@dataclass
class FinetuneTrainerConfig:
    max_epochs: int = 3
    max_steps: Optional[int] = None
    batch_size: int = 32
    eval_batch_size: int = 64
    max_seq_len: int = 128
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    early_stopping_patience: int = 0
    progress: bool = True
    predict_test: bool = True


# ---- one schema per method (names are the `method.name` values; conf/method/<name>.yaml) ----
@dataclass
class FullMethod:
    name: str = "full"


@dataclass
class AdapterMethod:
    name: str = "adapter"
    bottleneck: int = 64
    activation: str = "gelu"
    train_layer_norm: bool = True


@dataclass
class PrefixMethod:
    name: str = "prefix"
    num_virtual_tokens: int = 16
    init_std: float = 0.02


@dataclass
class LoraMethod:
    name: str = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: Optional[list[str]] = None   # None: the architecture's attention projections


@dataclass
class BitfitMethod:
    name: str = "bitfit"


@dataclass
class SideMethod:
    name: str = "side"
    hidden: int = 64
    layers: int = 1
    heads: int = 2
    alpha_init: float = 0.5


@dataclass
class MaskMethod:
    name: str = "mask"
    threshold: float = 5e-3
    init_score: float = 1e-2


METHODS = {
    "full": FullMethod, "adapter": AdapterMethod, "prefix": PrefixMethod, "lora": LoraMethod,
    "bitfit": BitfitMethod, "side": SideMethod, "mask": MaskMethod,
}
ACTIVATIONS = ("gelu", "relu", "tanh")


@dataclass
class ModelSource:
    path: str = "???"                       # run dir | exported HF dir | any local BERT/ALBERT HF dir
    hidden_dropout: Optional[float] = None  # None = the backbone's own
    attention_dropout: Optional[float] = None


@dataclass
class FinetuneConfig:
    model: ModelSource = field(default_factory=ModelSource)
    run: RunConfig = field(default_factory=RunConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    method: Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    trainer: FinetuneTrainerConfig = field(default_factory=FinetuneTrainerConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def is_finetune_config(raw: DictConfig | dict) -> bool:
    """A run directory's config.yaml is a fine-tuning one when it has a task section."""
    return "task" in raw and "method" in raw


def _merge(schema_cls, node, prefix: str = "") -> DictConfig:
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema_cls), node)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        raise ConfigError(f"config key {prefix + key!r}: {msg}" if key else f"config: {msg}") from None
    return cfg


def _validate_method(node) -> DictConfig:
    if node is None or OmegaConf.select(node, "name") is None:
        raise ConfigError(f"config key 'method' must be set (method={'|'.join(METHODS)})")
    name = node.name
    if name not in METHODS:
        raise ConfigError(f"config key 'method.name' = {name!r}; expected one of {list(METHODS)}")
    known = set(METHODS[name].__dataclass_fields__)
    for key in node:
        if key not in known:
            raise ConfigError(f"config key 'method.{key}' is not a setting of method={name} (its keys: {', '.join(sorted(known))})")
    cfg = _merge(METHODS[name], node, "method.")
    for key in ("bottleneck", "num_virtual_tokens", "r", "hidden", "layers", "heads"):
        if key in cfg and cfg[key] <= 0:
            raise ConfigError(f"config key 'method.{key}' = {cfg[key]!r}; must be > 0")
    if name == "adapter" and cfg.activation not in ACTIVATIONS:
        raise ConfigError(f"config key 'method.activation' = {cfg.activation!r}; expected one of {list(ACTIVATIONS)}")
    if name == "side":
        if not 0.0 < cfg.alpha_init < 1.0:
            raise ConfigError(f"config key 'method.alpha_init' = {cfg.alpha_init!r}; must be within (0, 1)")
        if cfg.hidden % cfg.heads:
            raise ConfigError(f"config: method.hidden={cfg.hidden} is not divisible by method.heads={cfg.heads}")
    if name == "lora" and (not 0.0 <= cfg.dropout < 1.0 or (cfg.target_modules is not None and not cfg.target_modules)):
        raise ConfigError("config: method.dropout must be within [0, 1) and method.target_modules null or non-empty")
    if name == "mask" and cfg.init_score <= cfg.threshold:
        raise ConfigError(
            f"config: method.init_score={cfg.init_score} must be above method.threshold={cfg.threshold} "
            "(otherwise every weight starts masked out)"
        )
    return cfg


def validate(raw: DictConfig | dict) -> DictConfig:
    """Merge a composed config onto the schema and check values; returns a typed DictConfig."""
    if not isinstance(raw, DictConfig):
        raw = OmegaConf.create(raw)
    raw = raw.copy()
    method_node = raw.pop("method", None)
    cfg = _merge(FinetuneConfig, raw)
    cfg.method = _validate_method(method_node)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"config key {missing[0]!r} must be set (e.g. {missing[0]}=...)")
    _check_task(cfg.task)
    _check_training(cfg)
    return cfg


def _check_task(task) -> None:
    if task.type not in TASK_TYPES:
        raise ConfigError(f"config key 'task.type' = {task.type!r}; expected one of {list(TASK_TYPES)}")
    for key, allowed in (("format", FORMATS), ("quoting", ("auto", "none", "standard")), ("on_bad_row", ("skip", "error"))):
        if task[key] not in allowed:
            raise ConfigError(f"config key 'task.{key}' = {task[key]!r}; expected one of {list(allowed)}")
    allowed = ("auto", *METRICS[task.type])
    if task.metric not in allowed:
        raise ConfigError(f"config key 'task.metric' = {task.metric!r}; for task.type={task.type} expected one of {list(allowed)}")
    for key in ("text_column", "label_column"):
        if task[key] is None or task[key] == "":
            raise ConfigError(f"config key 'task.{key}' must be set (a column name or index)")
    if task.type == "pair_classification" and task.text_pair_column in (None, ""):
        raise ConfigError("config: task.type=pair_classification needs task.text_pair_column (the column of the second text)")
    if task.type == "token_classification":
        if task.text_pair_column is not None:
            raise ConfigError("config: task.type=token_classification takes no task.text_pair_column")
        if task.format in ("csv", "tsv"):
            raise ConfigError(f"config: task.format={task.format} cannot hold token labels; use conll, jsonl or parquet")
    if task.labels is not None:
        if task.type == "regression":
            raise ConfigError("config: task.labels is a class list; task.type=regression has numeric labels (set task.labels=null)")
        names = [str(x) for x in task.labels]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError(f"config key 'task.labels' = {names}; needs at least two distinct labels")


def _check_training(cfg) -> None:
    from parallel.optim import OPTIMIZERS
    from parallel.precision import CHOICES as PRECISIONS
    from parallel.schedules import SCHEDULES

    t = cfg.trainer
    for key in ("max_epochs", "batch_size", "eval_batch_size", "max_seq_len", "log_every", "keep_checkpoints"):
        if t[key] <= 0:
            raise ConfigError(f"config key 'trainer.{key}' = {t[key]!r}; must be > 0")
    for key in ("eval_every", "checkpoint_every", "early_stopping_patience"):
        if t[key] < 0:
            raise ConfigError(f"config key 'trainer.{key}' = {t[key]!r}; must be >= 0")
    if t.max_steps is not None and t.max_steps <= 0:
        raise ConfigError(f"config key 'trainer.max_steps' = {t.max_steps!r}; must be > 0 (or null)")
    if t.max_seq_len < 8:
        raise ConfigError(f"config key 'trainer.max_seq_len' = {t.max_seq_len}; must be >= 8")
    world = cfg.cluster.nproc * cfg.cluster.nnodes
    if cfg.cluster.nproc <= 0 or cfg.cluster.nnodes <= 0:
        raise ConfigError("config: cluster.nproc and cluster.nnodes must be > 0")
    for key in ("batch_size", "eval_batch_size"):
        if t[key] % world:
            raise ConfigError(f"config: trainer.{key}={t[key]} is a global batch; it must divide by the {world} processes")
    if cfg.cluster.kind != "local":
        raise ConfigError(f"config key 'cluster.kind' = {cfg.cluster.kind!r}; pretrain-finetune runs locally (cluster.kind=local)")
    if cfg.precision.dtype not in PRECISIONS:
        raise ConfigError(f"config key 'precision.dtype' = {cfg.precision.dtype!r}; expected one of {list(PRECISIONS)}")
    if cfg.optim.name not in OPTIMIZERS:
        raise ConfigError(f"config key 'optim.name' = {cfg.optim.name!r}; expected one of {list(OPTIMIZERS)}")
    if cfg.optim.impl != "torch":
        raise ConfigError("config key 'optim.impl' must be torch for fine-tuning (DeepSpeed optimizers belong to pretraining)")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"config key 'optim.lr' = {cfg.optim.lr!r}; must be > 0")
    if cfg.schedule.name not in SCHEDULES:
        raise ConfigError(f"config key 'schedule.name' = {cfg.schedule.name!r}; expected one of {list(SCHEDULES)}")
    for key in ("warmup_fraction", "min_lr_ratio", "decay_fraction"):
        if not 0.0 <= cfg.schedule[key] <= 1.0:
            raise ConfigError(f"config key 'schedule.{key}' = {cfg.schedule[key]!r}; must be within [0, 1]")
    try:
        TrackerConfig.from_any(cfg.tracker)
    except ValueError as e:
        raise ConfigError(f"config key {e}") from None
    for key in ("hidden_dropout", "attention_dropout"):
        value = cfg.model[key]
        if value is not None and not 0.0 <= value < 1.0:
            raise ConfigError(f"config key 'model.{key}' = {value!r}; must be within [0, 1) (or null)")
    check_run_name(cfg.run.name)


def primary_metric(task) -> str:
    """The metric early stopping and `best` follow (task.metric, or the task type's default)."""
    return METRICS[task.type][0] if task.metric == "auto" else task.metric


def finetune_hash(cfg: DictConfig) -> str:
    """What decides the trained weights' meaning; a resumed run refuses a checkpoint made under another."""
    c = OmegaConf.to_container(cfg, resolve=True)
    keyed = {"model": c["model"], "task": {k: v for k, v in c["task"].items() if k not in ("test", "metric", "on_bad_row")},
             "method": c["method"], "seed": c["run"]["seed"],
             "trainer": {k: c["trainer"][k] for k in ("batch_size", "max_seq_len")}}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]
