"""The typed schema of the whole training config, and its validation.

Hydra composes YAML from conf/; this module checks the result against dataclasses so a wrong
key or value is one clear error naming the key, before any process starts.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from parallel.config import OptimConfig, ParallelConfig, PrecisionConfig, ScheduleConfig
from parallel.precision import CHOICES as PRECISION_CHOICES
from parallel.topology import BACKENDS
from pretrain.data.config import DataConfig, ObjectiveConfig
from pretrain.model import registry
from pretrain.model.attention import BACKENDS as ATTENTION_BACKENDS
from pretrain.model.config import ModelConfig
from pretrain.tracking.config import TrackerConfig
from pretrain.train.nonfinite import NONFINITE_POLICIES, SPIKE_ACTIONS
from pretrain.train.phases import PhaseConfig, PhaseError, check_phases


class ConfigError(ValueError):
    """A user-caused config problem; the message names the key and value."""


@dataclass
class RunConfig:
    name: str = "???"
    root: str = "runs"
    fresh: bool = False
    dry_run: bool = False
    seed: int = 1234
    # Start from another run's checkpoint directory (runs/x/checkpoints/step_N) as a resume:
    # weights, optimizer state, lr schedule, step, tokens and data cursor (docs/training.md
    # "Branching"); used while this run has no checkpoint of its own.
    branch_from: Optional[str] = None
    branch_schedule: str = "continue"    # BRANCH_SCHEDULES: the checkpoint's lr schedule goes on, or
                                         # this run's `schedule` restarts at the branch over the rest


@dataclass
class LossSpikeConfig:
    factor: float = 3.0                  # a spike: loss > factor x the median of the recent losses
    window: int = 50                     # how many recent finite losses the median is taken over
    warmup: int = 100                    # no spike is flagged during the first `warmup` steps
    action: str = "log"                  # log | rewind


@dataclass
class StackingConfig:
    """Progressive stacking (pretrain/train/stacking.py): depth per stage and the steps that start them."""
    layers: list[int] = field(default_factory=list)   # e.g. [3, 6, 12]; [] = the full depth from the start
    steps: list[int] = field(default_factory=list)    # e.g. [1000, 3000]: one per stage after the first


@dataclass
class TrainerConfig:
    max_steps: Optional[int] = 1000
    max_tokens: Optional[int] = None
    max_time: Optional[str] = None       # seconds or HH:MM:SS (string so both parse)
    grad_accum: int = 1
    log_every: int = 10
    eval_every: int = 200
    eval_batches: Optional[int] = 50
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    progress: bool = True
    peak_flops: Optional[float] = None
    export_on_finish: bool = True
    record_samples: bool = False         # debug/audit: log (step, epoch, doc id, example) per rank
    on_nonfinite: str = "stop"           # stop | skip | rewind (pretrain/train/nonfinite.py)
    max_skips: int = 3                   # skip: non-finite steps in a row before the run stops
    max_rewinds: int = 3                 # rewind: rewinds per run before the run stops
    loss_spike: LossSpikeConfig = field(default_factory=LossSpikeConfig)
    stacking: StackingConfig = field(default_factory=StackingConfig)
    compile: bool = False                # torch.compile the model under the engine (not with pipeline stages)
    phases: list[PhaseConfig] = field(default_factory=list)   # pretrain/train/phases.py; [] = one phase


# Allowed values of the cluster keys (one place; the launchers and the sbatch template use them).
CLUSTER_KINDS = ("local", "slurm")
CHECKPOINT_SIGNALS = ("USR1", "USR2")   # SIGTERM always checkpoints too; NCCL may take USR1 -> USR2
RENDEZVOUS = ("static", "c10d")         # torchrun between nodes: node rank from SLURM, or elastic c10d


@dataclass
class ContainerConfig:
    """pyxis/enroot flags for every srun of the job (empty image = no container)."""
    image: Optional[str] = None          # --container-image (e.g. nvcr.io#nvidia/pytorch:24.05-py3)
    mounts: list[str] = field(default_factory=list)   # --container-mounts (src:dst), the run dir must be in one
    workdir: Optional[str] = None        # --container-workdir
    extra: list[str] = field(default_factory=list)    # more srun flags for the container (--container-writable ...)


@dataclass
class ClusterConfig:
    kind: str = "local"                  # CLUSTER_KINDS
    nproc: int = 1                       # processes (ranks) per node; on GPU nodes: GPUs per node
    nnodes: int = 1
    master_addr: str = "127.0.0.1"       # local only; SLURM: the first node of the job
    master_port: int = 0                 # 0 = a free port (local) / derived from the job id (SLURM)
    signal: str = "USR1"                 # CHECKPOINT_SIGNALS: checkpoint at the next step, then exit 0
    time_margin: int = 0                 # SLURM safety net: stop when the job has less left (s); 0 = off
    time_poll: int = 60                  # seconds between squeue polls of the job's time left (rank 0)
    # SLURM (kind == "slurm"); conf/cluster/slurm.yaml sets the defaults
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time: Optional[str] = None           # SLURM --time: minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
    gpus_per_node: int = 0               # 0 = CPU nodes (gloo); else == nproc (one rank per GPU, nccl)
    cpus_per_task: Optional[int] = None  # CPUs for one node's task (all its ranks and loader workers)
    mem: Optional[str] = None            # per node, SLURM syntax (64G, 0 = all of it)
    constraint: Optional[str] = None
    exclusive: bool = False
    exclude: Optional[str] = None        # nodes to avoid (SLURM node list)
    signal_grace: int = 180              # --signal=B:<signal>@<grace>: seconds before the time limit
    max_requeues: int = 3                # requeues after a checkpoint signal (SLURM_RESTART_COUNT cap)
    chain: int = 1                       # dependent jobs (afterany), each resuming the run
    rendezvous: str = "static"           # RENDEZVOUS
    python: Optional[str] = None         # interpreter on the nodes; None = the one that submitted
    extra_sbatch: list[str] = field(default_factory=list)   # more #SBATCH options ("--reservation=x")
    srun_args: list[str] = field(default_factory=list)      # more flags for the ranks' srun
    setup: list[str] = field(default_factory=list)          # shell lines before srun (module load ...)
    env: dict[str, str] = field(default_factory=dict)       # exported in the job (NCCL_* ...)
    container: ContainerConfig = field(default_factory=ContainerConfig)


RECIPES = ("classic", "modern")   # conf/recipe/<name>.yaml
BRANCH_SCHEDULES = ("continue", "restart")


@dataclass
class RecipeConfig:
    """Which recipe (conf/recipe/) set the training choices; the values live in the groups it sets."""
    name: str = "classic"


@dataclass
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)


_CHOICES = {
    "recipe.name": RECIPES,
    "run.branch_schedule": BRANCH_SCHEDULES,
    "model.arch": registry.names(),
    "model.attention_backend": ATTENTION_BACKENDS,
    "model.hidden_act": ("gelu", "gelu_new", "relu"),
    "model.sentence_head": ("sop", "nsp", "none"),
    "objective.masking": ("token", "whole_word", "span"),
    "objective.sentence_task": ("sop", "nsp", "none"),
    "parallel.zero_stage": (0, 1, 2, 3),
    "precision.dtype": PRECISION_CHOICES,
    "optim.name": ("adamw", "lamb"),
    "optim.impl": ("torch", "deepspeed"),
    "schedule.name": ("linear", "cosine", "constant", "wsd"),
    "cluster.kind": CLUSTER_KINDS,
    "cluster.signal": CHECKPOINT_SIGNALS,
    "cluster.rendezvous": RENDEZVOUS,
    "trainer.on_nonfinite": NONFINITE_POLICIES,
    "trainer.loss_spike.action": SPIKE_ACTIONS,
    "parallel.backend": (None, *BACKENDS),
}
_POSITIVE = (
    "model.hidden_size", "model.num_layers", "model.num_heads", "model.intermediate_size",
    "model.max_position_embeddings", "data.max_seq_len", "data.micro_batch_size",
    "trainer.grad_accum", "trainer.log_every", "trainer.keep_checkpoints", "cluster.nproc",
    "cluster.nnodes", "parallel.pipeline_stages", "optim.lr", "trainer.loss_spike.factor",
    "trainer.loss_spike.window",
)
_PROBABILITIES = (
    "objective.mlm_probability", "objective.eval_mlm_probability", "objective.mask_token_prob", "objective.random_token_prob",
    "data.short_seq_prob", "model.hidden_dropout", "model.attention_dropout", "schedule.warmup_fraction",
    "schedule.min_lr_ratio", "schedule.decay_fraction",
)


# OmegaConf names a bad key inside a list entry by the entry's type only.
_LIST_ENTRIES = {"SourceConfig": "data.sources", "PhaseConfig": "trainer.phases"}


def _get(cfg: DictConfig, dotted: str) -> Any:
    return OmegaConf.select(cfg, dotted)


def validate(raw: DictConfig | dict) -> DictConfig:
    """Merge a composed config onto the schema and check values; returns a typed DictConfig."""
    schema = OmegaConf.structured(TrainConfig)
    try:
        cfg = OmegaConf.merge(schema, raw)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        entry = next((f" (an entry of {path})" for name, path in _LIST_ENTRIES.items() if f"'{name}'" in msg), "")
        raise ConfigError(f"config key {key!r}: {msg}{entry}" if key else f"config: {msg}{entry}") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"config key {missing[0]!r} must be set (e.g. {missing[0]}=...)")
    for key, allowed in _CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key {key!r} = {value!r}; expected one of {list(allowed)}")
    for key in _POSITIVE:
        value = _get(cfg, key)
        if value is None or value <= 0:
            raise ConfigError(f"config key {key!r} = {value!r}; must be > 0")
    for key in ("trainer.max_steps", "trainer.max_tokens", "trainer.eval_batches"):
        value = _get(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"config key {key!r} = {value!r}; must be > 0 (or null)")
    for key in ("trainer.checkpoint_every",):
        if _get(cfg, key) <= 0:
            raise ConfigError(f"config key {key!r} = {_get(cfg, key)!r}; must be > 0")
    for key in ("parallel.reduce_bucket_size", "parallel.allgather_bucket_size"):
        if _get(cfg, key) is not None and _get(cfg, key) <= 0:
            raise ConfigError(f"config key {key!r} = {_get(cfg, key)!r}; must be > 0 (or null: from the model size)")
    for key in ("trainer.eval_every", "schedule.warmup_steps",
                "trainer.max_skips", "trainer.max_rewinds", "trainer.loss_spike.warmup"):
        if _get(cfg, key) < 0:
            raise ConfigError(f"config key {key!r} = {_get(cfg, key)!r}; must be >= 0")
    for key in _PROBABILITIES:
        value = _get(cfg, key)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"config key {key!r} = {value!r}; must be within [0, 1]")
    _check_relations(cfg)
    return cfg


def _check_relations(cfg: DictConfig) -> None:
    m, d, o, t = cfg.model, cfg.data, cfg.objective, cfg.trainer
    if m.hidden_size % m.num_heads:
        raise ConfigError(f"config: model.hidden_size={m.hidden_size} is not divisible by model.num_heads={m.num_heads}")
    if d.max_seq_len > m.max_position_embeddings:
        raise ConfigError(
            f"config: data.max_seq_len={d.max_seq_len} exceeds model.max_position_embeddings={m.max_position_embeddings}"
        )
    if o.mask_token_prob + o.random_token_prob > 1.0:
        raise ConfigError(
            f"config: objective.mask_token_prob + objective.random_token_prob = {o.mask_token_prob + o.random_token_prob} > 1"
        )
    from pretrain.model.config import ModelConfig
    from pretrain.objectives import build_objective

    try:   # the objective's own checks (its name, its sentence task, the head it needs), on the config as given
        objective = build_objective(o, ModelConfig(**OmegaConf.to_container(m, resolve=True)))
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None
    try:
        objective.check_parallel(cfg.parallel.zero_stage, cfg.parallel.pipeline_stages)
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None
    if cfg.parallel.pipeline_stages > 1 and objective.has_own_forward():
        raise ConfigError(f"config: objective.name={o.name} runs its own forward, which the pipeline engine cannot "
                          "split into stages; use parallel.pipeline_stages=1")
    from pretrain.data.errors import DataError
    from pretrain.data.sources import data_sources

    try:   # data.path or data.sources (names, weights): the one check the loader makes too
        data_sources(d)
    except DataError as e:
        raise ConfigError(str(e) if str(e).startswith("config") else f"config: {e}") from None
    if d.num_workers is not None and d.num_workers < 0:
        raise ConfigError(f"config key 'data.num_workers' = {d.num_workers}; must be >= 0")
    if t.max_steps is None and t.max_tokens is None and t.max_time is None:
        raise ConfigError("config: set at least one budget: trainer.max_steps, trainer.max_tokens or trainer.max_time")
    if t.max_time is not None:
        parse_duration(t.max_time)
    stages, world = cfg.parallel.pipeline_stages, cfg.cluster.nnodes * cfg.cluster.nproc
    if stages > 1 and cfg.parallel.zero_stage > 1:
        raise ConfigError(
            f"config: parallel.pipeline_stages={stages} needs parallel.zero_stage <= 1 "
            f"(got {cfg.parallel.zero_stage}); DeepSpeed cannot combine pipeline with ZeRO-2/3"
        )
    layer_count = registry.get(m.arch).layer_applications(m)
    if stages > layer_count:
        raise ConfigError(f"config: parallel.pipeline_stages={stages} exceeds the {layer_count} encoder layers of the "
                          f"model (model.num_layers); every pipeline stage needs at least one")
    if world % stages:
        raise ConfigError(f"config: parallel.pipeline_stages={stages} does not divide the world size {world} "
                          f"(cluster.nnodes={cfg.cluster.nnodes} x cluster.nproc={cfg.cluster.nproc})")
    if t.compile and stages > 1:
        raise ConfigError(f"config: trainer.compile=true is not supported with parallel.pipeline_stages={stages} "
                          "(DeepSpeed's pipeline engine runs each layer outside a compiled forward); "
                          "set trainer.compile=false")
    from pretrain.train.stacking import check_stacking

    try:
        check_stacking(t.stacking, m.num_layers, m.arch, cfg.parallel.zero_stage, stages)
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None
    from parallel.ds_config import validate as validate_engine

    try:
        validate_engine(cfg.parallel, cfg.precision, cfg.optim)
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None
    try:
        TrackerConfig.from_any(cfg.tracker)
    except ValueError as e:
        raise ConfigError(f"config key {e}") from None
    check_run_name(cfg.run.name)
    _check_cluster(cfg)
    if cfg.run.branch_schedule == "restart" and t.phases:
        from pretrain.train.phases import Phases

        if Phases(cfg).segmented():
            raise ConfigError("config: run.branch_schedule=restart and phases that set the schedule both place the "
                              "lr; use one (a phase's schedule keys, or the run's schedule restarted at the branch)")
    try:
        check_phases(cfg, validate)
    except PhaseError as e:
        raise ConfigError(str(e) if str(e).startswith("config") else f"config: {e}") from None


def check_run_name(name: str) -> None:
    """run.name becomes a directory under run.root (pretraining and fine-tuning alike)."""
    if not re.fullmatch(r"[A-Za-z0-9._\-/=,+]+", name) or ".." in name:
        raise ConfigError(f"config key 'run.name' = {name!r}; use letters, digits and ._-=,+/ only")


def _check_cluster(cfg: DictConfig) -> None:
    """Cluster values that are wrong whatever the launcher (the launchers add their own checks)."""
    c = cfg.cluster
    for key in ("time_margin", "max_requeues", "gpus_per_node", "master_port"):
        if c[key] < 0:
            raise ConfigError(f"config key 'cluster.{key}' = {c[key]!r}; must be >= 0")
    for key in ("signal_grace", "chain", "time_poll"):
        if c[key] <= 0:
            raise ConfigError(f"config key 'cluster.{key}' = {c[key]!r}; must be > 0")
    if c.cpus_per_task is not None and c.cpus_per_task <= 0:
        raise ConfigError(f"config key 'cluster.cpus_per_task' = {c.cpus_per_task!r}; must be > 0 (or null)")
    for key in ("partition", "account", "qos", "constraint", "exclude", "mem", "time", "python"):
        if c[key] is not None and not str(c[key]).strip():
            raise ConfigError(f"config key 'cluster.{key}' is empty; leave it unset (null) for the cluster's default")
    if c.gpus_per_node and c.gpus_per_node != c.nproc:
        raise ConfigError(
            f"config: cluster.gpus_per_node={c.gpus_per_node} but cluster.nproc={c.nproc}; one rank per GPU: "
            f"set cluster.nproc={c.gpus_per_node} (or gpus_per_node=0 for CPU nodes)"
        )
    if c.mem is not None and not re.fullmatch(r"\d+[KMGT]?", str(c.mem).strip()):
        raise ConfigError(f"config key 'cluster.mem' = {c.mem!r}; expected SLURM memory like 64G, 500M or 0 (all)")
    if c.time is not None:
        limit = parse_slurm_time(c.time, key="cluster.time")
        if limit is not None and c.signal_grace >= limit:
            raise ConfigError(
                f"config: cluster.signal_grace={c.signal_grace}s is not shorter than cluster.time={c.time!r} "
                f"({limit:.0f}s): the checkpoint signal would come at the start of the job"
            )
        if limit is not None and c.time_margin >= limit:
            raise ConfigError(
                f"config: cluster.time_margin={c.time_margin}s is not shorter than cluster.time={c.time!r} ({limit:.0f}s)"
            )
    for name in c.env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
            raise ConfigError(f"config key 'cluster.env.{name}': not a valid environment variable name")


def parse_duration(value: Union[str, int, float]) -> float:
    """'3600', '90.5', '01:30:00' or '1:30' (minutes:seconds) -> seconds."""
    text = str(value).strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            seconds = 0.0
            for p in parts:
                seconds = seconds * 60 + p
            return seconds
        return float(text)
    except ValueError:
        raise ConfigError(f"config key 'trainer.max_time' = {value!r}; expected seconds or HH:MM:SS") from None


_UNLIMITED = ("UNLIMITED", "INFINITE")
_SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def parse_slurm_time(value: Union[str, int], key: str = "cluster.time") -> Optional[float]:
    """SLURM's time syntax -> seconds; None for UNLIMITED/INFINITE.

    Accepts what `sbatch --time` accepts (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) and
    therefore what `squeue -o %L` prints (M:SS, H:MM:SS, D-HH:MM:SS). A bare number is minutes.
    """
    text = str(value).strip()
    if text.upper() in _UNLIMITED:
        return None
    m = _SLURM_TIME.fullmatch(text)
    if m is None:
        raise ConfigError(
            f"config key {key!r} = {value!r}; expected SLURM time: minutes, MM:SS, HH:MM:SS, "
            "D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED"
        )
    days, a, b, c = (None if g is None else int(g) for g in m.groups())
    if days is not None:
        hours, minutes, seconds = a, b or 0, c or 0
    elif c is not None:
        hours, minutes, seconds = a, b, c
    elif b is not None:
        hours, minutes, seconds = 0, a, b
    else:
        hours, minutes, seconds = 0, a, 0
    return float((((days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds)


def config_hash(cfg: DictConfig) -> str:
    """Hash of what decides the model and the data order; resume refuses a mismatch in these."""
    container = OmegaConf.to_container(cfg, resolve=True)
    keyed = {k: container[k] for k in ("model", "data", "objective")}
    keyed["model"] = {k: v for k, v in keyed["model"].items() if k not in ("gradient_checkpointing", "init_from")}
    keyed["data"] = {k: v for k, v in keyed["data"].items() if k not in ("num_workers", "prefetch_factor", "path", "train_urls", "valid_urls")}
    keyed["data"]["sources"] = [{k: v for k, v in s.items() if k in ("name", "weight")} for s in keyed["data"].get("sources", [])]
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
