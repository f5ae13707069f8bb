"""What a run reads: one prepared directory (`data.path`) or a mixture of them (`data.sources`).

One place turns the data config into `Source`s (name, directory, weight, URL overrides), checks
them (names, weights, one tokenizer for all) and derives the mixture weights, so the trainer,
the launcher's preflight and the export agree on what the data is.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from pretrain.data.errors import DataError

SINGLE = "data"     # the name of the one source of a `data.path` run


@dataclass(frozen=True)
class Source:
    name: str
    path: str
    weight: Optional[float]
    train_urls: Optional[str] = None
    valid_urls: Optional[str] = None


def is_mixture(data_cfg) -> bool:
    return bool(data_cfg.sources)


def data_sources(data_cfg) -> list[Source]:
    """The sources of a data config: `data.sources`, or `data.path` as one source named "data".

    Refuses a config with both or neither, a duplicate or unusable name, and weights that are
    missing, negative or do not sum to a positive number (each one line naming the key)."""
    if not data_cfg.sources:
        if not data_cfg.path:
            raise DataError("config key 'data.path' must be set (a directory made by pretrain-prepare), "
                            "or data.sources (a mixture)")
        if data_cfg.source_temperature is not None:
            raise DataError("config key 'data.source_temperature' needs data.sources (a mixture), not data.path")
        return [Source(SINGLE, str(data_cfg.path), 1.0, data_cfg.train_urls, data_cfg.valid_urls)]
    if data_cfg.path:
        raise DataError(f"config: data.path={data_cfg.path!r} and data.sources are both set; a run reads one "
                        "directory (data.path) or a mixture (data.sources)")
    for key in ("train_urls", "valid_urls"):
        if getattr(data_cfg, key, None):
            raise DataError(f"config key 'data.{key}' does not apply to a mixture; set data.sources[i].{key}")
    out, seen = [], set()
    for i, s in enumerate(data_cfg.sources):
        name = str(s.name)
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise DataError(f"config key 'data.sources[{i}].name' = {name!r}; use letters, digits and _.- only")
        if name in seen:
            raise DataError(f"config key 'data.sources[{i}].name' = {name!r} is used twice")
        seen.add(name)
        if not s.path:
            raise DataError(f"config key 'data.sources[{i}].path' must be set (source {name!r})")
        out.append(Source(name, str(s.path), None if s.weight is None else float(s.weight), s.train_urls, s.valid_urls))
    check_weights(out, data_cfg.source_temperature)
    return out


def check_weights(sources: Sequence[Source], temperature: Optional[float]) -> None:
    """Weights all given (temperature null) or all from the temperature; never negative, sum > 0."""
    given = [s.weight is not None for s in sources]
    if temperature is not None:
        if not float(temperature) > 0:
            raise DataError(f"config key 'data.source_temperature' = {temperature!r}; must be > 0")
        if any(given):
            i = given.index(True)
            raise DataError(f"config key 'data.sources[{i}].weight' is set together with data.source_temperature; "
                            "give weights or a temperature, not both")
        return
    if not all(given):
        i = given.index(False)
        raise DataError(f"config key 'data.sources[{i}].weight' must be set (source {sources[i].name!r}), "
                        "or set data.source_temperature")
    for i, s in enumerate(sources):
        if not (math.isfinite(s.weight) and s.weight >= 0):
            raise DataError(f"config key 'data.sources[{i}].weight' = {s.weight!r}; must be >= 0")
    if not sum(s.weight for s in sources) > 0:
        raise DataError(f"config key 'data.sources' weights {[s.weight for s in sources]} must sum to a positive number")


def mixture_weights(sources: Sequence[Source], temperature: Optional[float], sizes: Sequence[int]) -> list[float]:
    """Normalized weights: the given ones, or sizes^(1/T) (mmBERT / XLM-R style sampling)."""
    if temperature is None:
        raw = [float(s.weight) for s in sources]
    else:
        raw = [float(n) ** (1.0 / float(temperature)) if n > 0 else 0.0 for n in sizes]
        if not sum(raw) > 0:
            raise DataError(f"data.source_temperature: the sources hold no training tokens ({list(sizes)})")
    total = sum(raw)
    return [w / total for w in raw]


def check_one_tokenizer(sources: Sequence[Source], manifests: Sequence) -> None:
    """A mixture's ids must mean the same tokens everywhere: one tokenizer (its sha256) for all."""
    first = manifests[0]
    for src, m in zip(sources[1:], manifests[1:]):
        if m.tokenizer_sha256 != first.tokenizer_sha256:
            raise DataError(f"data.sources: {src.name!r} ({m.tokenizer_file}) and {sources[0].name!r} "
                            f"({first.tokenizer_file}) were prepared with different tokenizers "
                            f"(sha256 {m.tokenizer_sha256[:12]}... vs {first.tokenizer_sha256[:12]}...); "
                            "a mixture needs one tokenizer")


def source_seed(seed: int, name: str) -> int:
    """A source's own data seed: sources shuffle and mask independently of each other."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
