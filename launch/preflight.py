"""Checks that need the filesystem but no process group, run once before any rank starts."""
from __future__ import annotations

import os

from omegaconf import DictConfig


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


def preflight(cfg: DictConfig) -> None:
    from pretrain.shardformat import MANIFEST_NAME, load_manifest
    from pretrain.train.config import ConfigError

    if not cfg.data.path or not os.path.isdir(cfg.data.path):
        raise ConfigError(f"config key 'data.path' = {cfg.data.path!r}: no such directory (run pretrain-prepare first)")
    manifest = load_manifest(cfg.data.path)
    resolve_vocab_size(cfg, manifest.vocab_size, os.path.join(cfg.data.path, MANIFEST_NAME))
    for split in (cfg.data.train_split, cfg.data.valid_split):
        if split not in manifest.splits and not (split == cfg.data.valid_split and cfg.trainer.eval_every == 0):
            raise ConfigError(
                f"{os.path.join(cfg.data.path, MANIFEST_NAME)} has no split {split!r} (has {sorted(manifest.splits)})"
            )
    _check_precision(cfg)
    if cfg.model.init_from:
        check_init_tokenizer(cfg.model.init_from, manifest, cfg.data.path)


def _check_precision(cfg: DictConfig) -> None:
    """fp16/bf16 support is a property of this machine's accelerator: say so before starting ranks."""
    from launch.local import rank_environment
    from pretrain.train.config import ConfigError

    if cfg.cluster.kind != "local":
        return  # the compute nodes' accelerator is not this machine's
    accelerator = rank_environment().get("DS_ACCELERATOR")
    if accelerator:  # ask DeepSpeed about the accelerator the ranks will use
        os.environ.setdefault("DS_ACCELERATOR", accelerator)
    from parallel.ds_config import check_device_dtype

    try:
        import torch

        if cfg.precision.dtype == "fp16" and not torch.cuda.is_available():
            # DeepSpeed's CPU accelerator claims fp16 support, then fails or hangs inside the
            # loss scaler: fp16 mixed precision is a GPU feature.
            raise ValueError("precision.dtype=fp16 needs a CUDA GPU; use precision=bf16 or fp32 on this machine")
        check_device_dtype(cfg.precision.dtype)
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None


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
