"""Config -> loaders: the two entry points the trainer uses."""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Optional, Union

from pretrain.data.config import DataConfig, ObjectiveConfig
from pretrain.data.errors import DataError
from pretrain.data.examples import SENTENCE_TASKS
from pretrain.data.loader import ResumableLoader
from pretrain.data.masking import MASKING_MODES
from pretrain.data.shards import resolve_shards
from pretrain.data.stream import StreamSpec
from pretrain.data.tokens import check_tokenizer, token_table
from pretrain.shardformat import Manifest, load_manifest


MAX_AUTO_WORKERS = 8


def loader_workers(configured: Optional[int], env=None) -> int:
    """`data.num_workers`, or for null: the CPUs this process may use divided among the node's
    ranks, one kept for the rank itself, at least 1 and at most MAX_AUTO_WORKERS (decoding and
    masking a batch is light next to a training step; more workers only add memory).

    The streams a rank reads depend on the count (docs/data.md): the same machine type gives the
    same count, hence a bit-exact resume; a resume on other hardware re-splits the streams
    (exactly-once still holds, the order changes). Set it explicitly to pin it."""
    import os

    if configured is not None:
        return int(configured)
    env = os.environ if env is None else env
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    ranks_here = max(1, int(env.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(MAX_AUTO_WORKERS, cpus // ranks_here - 1))


def _manifest(manifest_or_path: Union[Manifest, str, None], data_cfg: DataConfig) -> Manifest:
    if isinstance(manifest_or_path, Manifest):
        return manifest_or_path
    return load_manifest(str(manifest_or_path if manifest_or_path is not None else data_cfg.path))


def _validate(data_cfg: DataConfig, obj: ObjectiveConfig) -> None:
    if obj.sentence_task not in SENTENCE_TASKS:
        raise DataError(f"objective.sentence_task={obj.sentence_task!r}: expected one of {SENTENCE_TASKS}")
    if obj.masking not in MASKING_MODES:
        raise DataError(f"objective.masking={obj.masking!r}: expected one of {MASKING_MODES}")
    if data_cfg.max_seq_len < 8:
        raise DataError(f"data.max_seq_len={data_cfg.max_seq_len}: must be >= 8")
    if data_cfg.pack_lookahead < 1:
        raise DataError(f"data.pack_lookahead={data_cfg.pack_lookahead}: must be >= 1")
    if data_cfg.micro_batch_size < 1:
        raise DataError(f"data.micro_batch_size={data_cfg.micro_batch_size}: must be >= 1")
    for key in ("mlm_probability", "eval_mlm_probability"):
        if not 0.0 < getattr(obj, key) < 1.0:
            raise DataError(f"objective.{key}={getattr(obj, key)}: must be in (0, 1)")
    if obj.mask_token_prob + obj.random_token_prob > 1.0 or min(obj.mask_token_prob, obj.random_token_prob) < 0:
        raise DataError("objective.mask_token_prob + random_token_prob must be within [0, 1]")
    if not 0.0 < obj.span_geometric_p <= 1.0 or obj.span_max_length < 1:
        raise DataError("objective.span_geometric_p must be in (0, 1] and span_max_length >= 1")


def _plain(obj) -> ObjectiveConfig:
    """A plain dataclass copy (the config may be an OmegaConf DictConfig); it travels to workers."""
    return ObjectiveConfig(**{f.name: getattr(obj, f.name) for f in fields(ObjectiveConfig) if hasattr(obj, f.name)})


def _build(data_cfg, obj, rank, world_size, manifest_or_path, split, urls, epochs, batch_size, with_ids, pin_memory):
    obj = _plain(obj)
    _validate(data_cfg, obj)
    manifest = _manifest(manifest_or_path, data_cfg)
    table = token_table(manifest, check_tokenizer(manifest))
    spec = StreamSpec(
        shards=resolve_shards(manifest, split, urls),
        table=table,
        objective=obj,
        seed=int(data_cfg.seed),
        max_seq_len=int(data_cfg.max_seq_len),
        batch_size=int(batch_size),
        short_seq_prob=float(data_cfg.short_seq_prob),
        epochs=epochs,
        with_ids=with_ids,
        packing=bool(data_cfg.packing),
        pack_lookahead=int(data_cfg.pack_lookahead),
    )
    return ResumableLoader(spec, rank, world_size, loader_workers(data_cfg.num_workers),
                           int(data_cfg.prefetch_factor), pin_memory)


def build_train_loader(data_cfg: DataConfig, objective_cfg: ObjectiveConfig, rank: int, world_size: int,
                       manifest_or_path: Union[Manifest, str, None] = None, *, epochs: Optional[int] = None,
                       with_ids: bool = False, pin_memory: bool = False) -> ResumableLoader:
    """Infinite (``epochs=None``) training batches of ``data.micro_batch_size`` for one rank."""
    return _build(data_cfg, objective_cfg, rank, world_size, manifest_or_path, data_cfg.train_split,
                  data_cfg.train_urls, epochs, data_cfg.micro_batch_size, with_ids, pin_memory)


def build_eval_loader(data_cfg: DataConfig, objective_cfg: ObjectiveConfig, rank: int, world_size: int,
                      manifest_or_path: Union[Manifest, str, None] = None, *, batch_size: Optional[int] = None,
                      with_ids: bool = False, pin_memory: bool = False) -> ResumableLoader:
    """One pass over the validation split, sharded across ranks; partial last batches; masked at
    `objective.eval_mlm_probability` (not the training rate), so evaluations compare across recipes.

    Ranks (and streams) may yield different numbers of batches.
    """
    plain = _plain(objective_cfg)
    objective = replace(plain, mlm_probability=plain.eval_mlm_probability)
    return _build(data_cfg, objective, rank, world_size, manifest_or_path, data_cfg.valid_split,
                  data_cfg.valid_urls, 1, batch_size or data_cfg.micro_batch_size, with_ids, pin_memory)
