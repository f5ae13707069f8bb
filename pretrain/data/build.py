"""Config -> loaders: the two entry points the trainer uses."""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Optional

from pretrain.data.config import DataConfig, ObjectiveConfig
from pretrain.data.errors import DataError
from pretrain.data.examples import SENTENCE_TASKS
from pretrain.data.loader import ResumableLoader
from pretrain.data.masking import MASKING_MODES
from pretrain.data.mixture import MixtureSpec
from pretrain.data.shards import resolve_shards
from pretrain.data.sources import check_one_tokenizer, data_sources, is_mixture, mixture_weights, source_seed
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


def _manifests(manifests, sources) -> dict:
    """name -> Manifest for every source: given (a Manifest for a one-source run, or a dict), or loaded."""
    if isinstance(manifests, Manifest):
        manifests = {sources[0].name: manifests}
    elif isinstance(manifests, str):
        manifests = {sources[0].name: load_manifest(manifests)}
    manifests = dict(manifests or {})
    return {s.name: manifests[s.name] if s.name in manifests else load_manifest(s.path) for s in sources}


def load_source_manifests(data_cfg) -> dict:
    """name -> Manifest of every source, checked to share one tokenizer (one line otherwise)."""
    sources = data_sources(data_cfg)
    manifests = _manifests(None, sources)
    check_one_tokenizer(sources, [manifests[s.name] for s in sources])
    return manifests


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


def _stream_spec(data_cfg, obj, manifest, shards, seed, epochs, batch_size, with_ids) -> StreamSpec:
    return StreamSpec(
        shards=shards,
        table=token_table(manifest, check_tokenizer(manifest)),
        objective=obj,
        seed=int(seed),
        max_seq_len=int(data_cfg.max_seq_len),
        batch_size=int(batch_size),
        short_seq_prob=float(data_cfg.short_seq_prob),
        epochs=epochs,
        with_ids=with_ids,
        packing=bool(data_cfg.packing),
        pack_lookahead=int(data_cfg.pack_lookahead),
    )


def train_spec(data_cfg, obj, manifests=None, *, epochs=None, with_ids=False):
    """The training stream spec: a StreamSpec (data.path) or a MixtureSpec (data.sources)."""
    obj = _plain(obj)
    _validate(data_cfg, obj)
    sources = data_sources(data_cfg)
    manifests = _manifests(manifests, sources)
    size = data_cfg.micro_batch_size
    if not is_mixture(data_cfg):
        m = manifests[sources[0].name]
        return _stream_spec(data_cfg, obj, m, resolve_shards(m, data_cfg.train_split, data_cfg.train_urls),
                            data_cfg.seed, epochs, size, with_ids)
    check_one_tokenizer(sources, [manifests[s.name] for s in sources])
    specs = []
    for s in sources:
        m = manifests[s.name]
        if data_cfg.train_split not in m.splits:
            raise DataError(f"{m.root}/manifest.json (source {s.name!r}) has no split {data_cfg.train_split!r} "
                            f"(has {sorted(m.splits)})")
        specs.append(_stream_spec(data_cfg, obj, m, resolve_shards(m, data_cfg.train_split, s.train_urls),
                                  source_seed(data_cfg.seed, s.name), epochs, size, with_ids))
    sizes = [manifests[s.name].splits[data_cfg.train_split].tokens for s in sources]
    weights = mixture_weights(sources, data_cfg.source_temperature, sizes)
    return MixtureSpec(tuple(s.name for s in sources), tuple(specs), tuple(weights), int(data_cfg.seed))


def build_train_loader(data_cfg: DataConfig, objective_cfg: ObjectiveConfig, rank: int, world_size: int,
                       manifests=None, *, epochs: Optional[int] = None, with_ids: bool = False,
                       pin_memory: bool = False, on_epoch=None) -> ResumableLoader:
    """Infinite (``epochs=None``) training batches of ``data.micro_batch_size`` for one rank.

    `manifests`: the run's Manifest (data.path), {source name: Manifest}, a path, or None (loaded)."""
    spec = train_spec(data_cfg, objective_cfg, manifests, epochs=epochs, with_ids=with_ids)
    return ResumableLoader(spec, rank, world_size, loader_workers(data_cfg.num_workers),
                           int(data_cfg.prefetch_factor), pin_memory, on_epoch=on_epoch)


def build_eval_loader(data_cfg: DataConfig, objective_cfg: ObjectiveConfig, rank: int, world_size: int,
                      manifests=None, *, batch_size: Optional[int] = None, with_ids: bool = False,
                      pin_memory: bool = False, source: Optional[str] = None) -> ResumableLoader:
    """One pass over the validation split of one source (`source`: its name; None = the first),
    sharded across ranks; partial last batches; masked at `objective.eval_mlm_probability` (not
    the training rate), so evaluations compare across recipes and phases.

    Ranks (and streams) may yield different numbers of batches.
    """
    plain = _plain(objective_cfg)
    _validate(data_cfg, plain)
    objective = replace(plain, mlm_probability=plain.eval_mlm_probability)
    sources = data_sources(data_cfg)
    chosen = sources[0] if source is None else next((s for s in sources if s.name == source), None)
    if chosen is None:
        raise DataError(f"no data source named {source!r} (sources: {[s.name for s in sources]})")
    m = _manifests(manifests, sources)[chosen.name]
    urls = chosen.valid_urls
    seed = source_seed(data_cfg.seed, chosen.name) if is_mixture(data_cfg) else data_cfg.seed
    spec = _stream_spec(data_cfg, objective, m, resolve_shards(m, data_cfg.valid_split, urls), seed, 1,
                        batch_size or data_cfg.micro_batch_size, with_ids)
    return ResumableLoader(spec, rank, world_size, loader_workers(data_cfg.num_workers),
                           int(data_cfg.prefetch_factor), pin_memory)
