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
    if cfg.model.init_from and not os.path.isdir(cfg.model.init_from):
        raise ConfigError(f"config key 'model.init_from' = {cfg.model.init_from!r}: no such directory")
