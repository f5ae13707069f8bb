"""Checks that need the filesystem but no process group, run once before any rank starts.

They also settle what config.yaml records for the ranks: the vocabulary size, the effective
model of a continued-pretraining run (model.init_from) and the resolved precision.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Sequence

from omegaconf import DictConfig, OmegaConf


def resolve_vocab_size(cfg: DictConfig, manifest_vocab: int, manifest_path: str) -> None:
    """model.vocab_size 0 -> the tokenizer's; a smaller model vocab than the tokenizer's is refused."""
    from pretrain.train.config import ConfigError

    if not cfg.model.vocab_size:
        cfg.model.vocab_size = manifest_vocab
    elif cfg.model.vocab_size < manifest_vocab:
        raise ConfigError(
            f"config key 'model.vocab_size' = {cfg.model.vocab_size} is smaller than the tokenizer's "
            f"{manifest_vocab} ({manifest_path}); set model.vocab_size=0 to use the tokenizer's size"
        )


def preflight(cfg: DictConfig, overrides: Sequence[str] = ()) -> list[str]:
    """Check and settle `cfg` in place; returns the lines the launcher prints (precision).

    `overrides` are the command-line overrides (Hydra's task overrides): with model.init_from
    they tell an explicit model choice, which must agree with the directory, from the default.
    """
    from pretrain.shardformat import MANIFEST_NAME, load_manifest
    from pretrain.train.config import ConfigError

    from launch.precision import settle_launch_precision

    from pretrain.data.sources import check_one_tokenizer, data_sources, is_mixture

    sources = data_sources(cfg.data)
    manifests = []
    for i, src in enumerate(sources):
        key = f"data.sources[{i}].path" if is_mixture(cfg.data) else "data.path"
        if not os.path.isdir(src.path):
            raise ConfigError(f"config key {key!r} = {src.path!r}: no such directory (run pretrain-prepare first)")
        manifest = load_manifest(src.path)
        for split in (cfg.data.train_split, cfg.data.valid_split):
            if split not in manifest.splits and not (split == cfg.data.valid_split and cfg.trainer.eval_every == 0):
                raise ConfigError(
                    f"{os.path.join(src.path, MANIFEST_NAME)} has no split {split!r} (has {sorted(manifest.splits)})"
                )
        manifests.append(manifest)
    check_one_tokenizer(sources, manifests)
    manifest, data_path = manifests[0], sources[0].path
    if cfg.run.branch_from:
        check_branch(cfg)
    if cfg.model.init_from:
        if os.path.isfile(os.path.join(cfg.model.init_from, "parallel_meta.json")):
            raise ConfigError(f"config key 'model.init_from' = {cfg.model.init_from!r} is a training checkpoint, not a "
                              "Hugging Face directory: run.branch_from=<it> continues it (optimizer state, lr schedule, "
                              "data cursor); pretrain-export makes a directory model.init_from can read")
        check_init_tokenizer(cfg.model.init_from, manifest, data_path)
        settle_init_from(cfg, overrides)
    resolve_vocab_size(cfg, manifest.vocab_size, os.path.join(data_path, MANIFEST_NAME))
    check_objective_files(cfg, manifest)
    check_ranks_per_node(cfg)
    lines = settle_launch_precision(cfg)
    _check_engine_with_dtype(cfg)
    _check_precision(cfg)
    return lines


def check_objective_files(cfg: DictConfig, manifest) -> None:
    """What the objective reads from files (a distillation teacher and its tokenizer)."""
    from pretrain.model.config import ModelConfig
    from pretrain.objectives import build_objective
    from pretrain.train.config import ConfigError

    try:
        objective = build_objective(cfg.objective, ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True)))
        objective.preflight(manifest.tokenizer_sha256)
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None


def check_branch(cfg: DictConfig) -> None:
    """run.branch_from names a complete checkpoint (while this run has none of its own)."""
    from parallel.checkpoint import CheckpointError, peek_checkpoint
    from pretrain.train.config import ConfigError

    own = os.path.join(cfg.run.root, cfg.run.name, "checkpoints", "latest")
    if os.path.exists(own):
        return   # the branch has checkpoints of its own: it resumes those
    if cfg.model.init_from:
        raise ConfigError("config: run.branch_from and model.init_from both set the starting weights; use one")
    try:
        peek_checkpoint(cfg.run.branch_from)
    except CheckpointError as e:
        raise ConfigError(f"config key 'run.branch_from': {e}") from None


def check_ranks_per_node(cfg: DictConfig, visible_gpus: int | None = None) -> None:
    """One rank per GPU: `cluster.nproc` above the GPUs a node has is refused (DeepSpeed and our
    device rule put local rank k on device k; extra ranks would have none). Local runs count the
    GPUs visible here; SLURM runs compare with `cluster.gpus_per_node` (0 = CPU nodes)."""
    from pretrain.train.config import ConfigError

    c = cfg.cluster
    if c.kind == "slurm":
        gpus, where = c.gpus_per_node, "cluster.gpus_per_node"
    else:
        if visible_gpus is None:
            from parallel.device import visible_gpus as count

            visible_gpus = count()
        gpus, where = visible_gpus, "GPUs visible on this machine"
        if gpus and os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            where += f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']})"
    if gpus and c.nproc > gpus:
        raise ConfigError(f"config key 'cluster.nproc' = {c.nproc} exceeds the {gpus} {where}: one rank per GPU; "
                          f"set cluster.nproc={gpus} (or fewer)")


def _check_engine_with_dtype(cfg: DictConfig) -> None:
    """The config was validated with the dtype as asked; once `auto` is a concrete dtype, the
    engine combinations that depend on it (pipeline bf16 needs ZeRO-1, fp16 needs ZeRO >= 1) are
    checked again, here, instead of failing on every rank."""
    from parallel.ds_config import validate as validate_engine
    from pretrain.train.config import ConfigError

    try:
        validate_engine(cfg.parallel, cfg.precision, cfg.optim)
    except ValueError as e:
        why = f" (precision=auto chose {cfg.precision.dtype}: {cfg.precision.reason})" if cfg.precision.resolved_from == "auto" else ""
        raise ConfigError(f"config: {e}{why}") from None


def _check_precision(cfg: DictConfig) -> None:
    """bf16/fp16 support of the accelerator DeepSpeed will use here: say so before starting ranks
    (fp16 without CUDA is refused earlier, by parallel.precision.resolve_precision)."""
    from launch.local import rank_environment
    from pretrain.train.config import ConfigError

    if cfg.cluster.kind != "local":
        return  # the compute nodes' accelerator is not this machine's
    accelerator = rank_environment().get("DS_ACCELERATOR")
    if accelerator:  # ask DeepSpeed about the accelerator the ranks will use
        os.environ.setdefault("DS_ACCELERATOR", accelerator)
    from parallel.ds_config import check_device_dtype

    try:
        check_device_dtype(cfg.precision.dtype)
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None


def _override_key(item: str) -> str:
    return item.split("=", 1)[0].lstrip("+~")


def explicit_model_keys(overrides: Sequence[str]) -> list[str]:
    """The model choices a user made on the command line: `model` (a preset) or `model.<key>`."""
    return [key for key in map(_override_key, overrides) if key == "model" or key.startswith("model.")]


def settle_init_from(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """Continued pretraining: replace cfg.model by the effective model, or refuse a contradiction.

    The shape (every ModelConfig key but pretrain.hf.export.RUN_OPTIONS) comes from the HF
    directory; dropout, gradient_checkpointing and sentence_head stay the run's. An explicit
    model choice must agree with the directory, else one ConfigError: `model=<preset>` on the
    command line (its whole shape), `model.<shape key>=...` (that key), a non-zero
    model.vocab_size. The default preset's shape, chosen by nobody, is simply replaced.
    """
    from pretrain.hf.export import RUN_OPTIONS, ExportError, continued_config, hf_model_config, shape_differences
    from pretrain.model.config import ModelConfig
    from pretrain.train.config import ConfigError

    init_from = cfg.model.init_from
    try:
        pretrained = hf_model_config(init_from)
    except ExportError as e:
        raise ConfigError(f"config key 'model.init_from': {e}") from None
    run = ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True))
    differ = shape_differences(run, pretrained)
    if not run.vocab_size:  # 0 = "the data's": nobody chose it, the directory's vocabulary stands
        differ.pop("vocab_size", None)
    explicit = explicit_model_keys(overrides)
    preset = next((o for o in overrides if _override_key(o) == "model"), None)
    if preset is not None:
        conflict = differ
    else:
        conflict = {k: v for k, v in differ.items() if f"model.{k}" in explicit or k == "vocab_size"}
    if conflict:
        shown = ", ".join(f"{k}={ours!r} vs {theirs!r}" for k, (ours, theirs) in list(conflict.items())[:3])
        what = preset or ", ".join(f"model.{k}" for k in conflict)
        options = ", ".join(k for k in RUN_OPTIONS if k != "init_from")
        raise ConfigError(
            f"config: {what} contradicts model.init_from={init_from!r} ({shown}): with init_from the shape "
            f"comes from that directory; drop the override or make it match (only {options} may differ)"
        )
    for key, value in asdict(continued_config(run, pretrained)).items():
        cfg.model[key] = value


def check_init_tokenizer(init_from: str, manifest, data_path: str) -> None:
    """Continued pretraining must read shards made with the model's own tokenizer: same ids."""
    from tokenizers import Tokenizer

    from pretrain.shardformat import tokenizer_fingerprint
    from pretrain.train.config import ConfigError

    if not os.path.isdir(init_from):
        raise ConfigError(f"config key 'model.init_from' = {init_from!r}: no such directory")
    path = os.path.join(init_from, "tokenizer.json")
    if not os.path.isfile(path):
        raise ConfigError(f"config key 'model.init_from' = {init_from!r} has no tokenizer.json to check the data against")
    if tokenizer_fingerprint(Tokenizer.from_file(path)) != manifest.tokenizer_sha256:
        raise ConfigError(
            f"{path} differs from the tokenizer of the data in {data_path}; "
            f"prepare the data with tokenizer.path={path}"
        )
