"""Typed schema of the `pretrain-prepare` config (defaults live in conf/prepare.yaml).

Hydra gives us an untyped mapping; everything downstream wants checked, typed values, and a user
who typos a key or value should get one line naming it, not a traceback from deep in the run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints


class PrepareError(ValueError):
    """An error the user can cause (bad config, bad input); printed as one line, exit code 2."""


@dataclass
class TokenizerConfig:
    path: Optional[str] = None          # reuse this tokenizer.json instead of training one
    vocab_size: int = 30522
    lowercase: bool = True
    strip_accents: Optional[bool] = None  # None = follow lowercase (BERT's convention)
    min_frequency: int = 2
    # Train on at most this many bytes of raw text (the first ones in input order); 0 = all.
    train_bytes: int = 1_000_000_000


@dataclass
class FormatConfig:
    type: str = "auto"                  # auto | text | jsonl | parquet  (auto = by extension)
    compression: str = "auto"           # auto | none | gz | zst | bz2   (auto = by extension)
    text_documents: str = "blank_line"  # blank_line | line
    text_field: str = "text"            # JSONL key / Parquet column holding the document


@dataclass
class PrepareConfig:
    input: list[str] = field(default_factory=list)   # paths or globs
    output: str = "???"
    validation_fraction: float = 0.01
    seed: int = 1234
    num_workers: Optional[int] = None   # None = os.cpu_count(); 0 = tokenize in this process
    shard_size_bytes: int = 64 * 1024 * 1024   # target size of one shard's token data
    min_train_shards: int = 4
    min_valid_shards: int = 1
    max_document_chars: int = 1_000_000  # longer documents are cut into pieces (pieces.py)
    max_jsonl_line_bytes: int = 64 * 1024 * 1024  # a JSONL line is parsed whole: longer ones are counted skips
    on_bad_record: str = "skip"         # skip (count in the manifest) | error (stop, naming file:line)
    invalid_utf8: str = "skip"          # skip (count) | replace (U+FFFD)
    overwrite: bool = False
    progress: bool = True
    chunk_bytes: int = 1024 * 1024      # raw text per task sent to a worker
    spill_buffer_bytes: int = 32 * 1024 * 1024  # encoded docs buffered before appending to bucket files
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    format: FormatConfig = field(default_factory=FormatConfig)

    def resolved_workers(self) -> int:
        return (os.cpu_count() or 1) if self.num_workers is None else self.num_workers


_CHOICES = {
    "format.type": ("auto", "text", "jsonl", "parquet"),
    "format.compression": ("auto", "none", "gz", "zst", "bz2"),
    "format.text_documents": ("blank_line", "line"),
    "on_bad_record": ("skip", "error"),
    "invalid_utf8": ("skip", "replace"),
}

# Keys that do not change the output bytes: excluded from config_hash, so re-running with another
# worker count or without progress bars is "the same config".
_NOT_HASHED = ("output", "num_workers", "overwrite", "progress", "chunk_bytes", "spill_buffer_bytes")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    if origin is Union:
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, options[0], key)
    if origin is list:
        (item,) = get_args(hint)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise PrepareError(f"config key {key!r}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise PrepareError(f"config key {key!r}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise PrepareError(f"config key {key!r}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise PrepareError(f"config key {key!r}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise PrepareError(f"config key {key!r}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {hint} for {key}")  # internal bug


def _build(cls: type, raw: Any, prefix: str = "") -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PrepareError(f"config key {prefix.rstrip('.')!r}: expected a mapping, got {raw!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise PrepareError(f"unknown config key {prefix + str(key)!r} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in raw.items()}
    return cls(**kwargs)


def validate_config(raw: Any) -> PrepareConfig:
    """Typed, checked config from a mapping (a DictConfig, or a plain dict in tests)."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(raw, DictConfig):
            raw = OmegaConf.to_container(raw, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    raw = dict(raw or {})
    raw.pop("hydra", None)
    cfg = _build(PrepareConfig, raw)
    for key, choices in _CHOICES.items():
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        if obj not in choices:
            raise PrepareError(f"config key {key!r}: {obj!r} is not one of {', '.join(choices)}")
    if not cfg.input:
        raise PrepareError("config key 'input': no input given (input='<path or glob>' or input='[a,b]')")
    if cfg.output in ("", "???"):
        raise PrepareError("config key 'output': no output directory given (output=<dir>)")
    if not 0.0 <= cfg.validation_fraction < 1.0:
        raise PrepareError(f"config key 'validation_fraction': {cfg.validation_fraction} is not in [0, 1)")
    checks = {
        "num_workers": cfg.num_workers is None or cfg.num_workers >= 0,
        "shard_size_bytes": cfg.shard_size_bytes >= 1024,
        "min_train_shards": cfg.min_train_shards >= 1,
        "min_valid_shards": cfg.min_valid_shards >= 0,
        "max_document_chars": cfg.max_document_chars >= 1,
        "max_jsonl_line_bytes": cfg.max_jsonl_line_bytes >= 1,
        "chunk_bytes": cfg.chunk_bytes >= 1,
        "spill_buffer_bytes": cfg.spill_buffer_bytes >= 0,
        "tokenizer.vocab_size": 5 < cfg.tokenizer.vocab_size <= 2**31 - 1,
        "tokenizer.min_frequency": cfg.tokenizer.min_frequency >= 0,
        "tokenizer.train_bytes": cfg.tokenizer.train_bytes >= 0,
    }
    for key, ok in checks.items():
        if not ok:
            obj = cfg
            for part in key.split("."):
                obj = getattr(obj, part)
            raise PrepareError(f"config key {key!r}: value {obj!r} is out of range")
    return cfg


def config_dict(cfg: PrepareConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_hash(cfg: PrepareConfig, tokenizer_sha256: str = "") -> str:
    """Hash of everything that decides the output bytes (not worker count, paths of output, UI)."""
    d = config_dict(cfg)
    for k in _NOT_HASHED:
        d.pop(k, None)
    if cfg.tokenizer.path is not None:
        # A reused tokenizer is identified by content, not by where the file lives.
        d["tokenizer"] = {"sha256": tokenizer_sha256}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
