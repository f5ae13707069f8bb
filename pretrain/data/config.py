"""Schema of the `data` and `objective` config groups (defaults live in conf/)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class SourceConfig:
    """One corpus of a mixture (`data.sources`, pretrain/data/mixture.py)."""
    name: str = "???"                   # letters, digits, _ - . (metric names: train/source/<name>/...)
    path: str = "???"                   # a prepared directory, as data.path
    weight: Optional[float] = None      # relative share of training rows; null with data.source_temperature
    train_urls: Optional[str] = None
    valid_urls: Optional[str] = None


@dataclass
class DataConfig:
    path: Optional[str] = None          # a prepared directory (manifest.json), local or any fs path
    # A mixture instead of `path`: several prepared directories (same tokenizer) read at chosen
    # weights; or, with `source_temperature` T (and no weights), weights proportional to
    # (train tokens)^(1/T): 1 = by size, larger = flatter (docs/data.md "Mixtures").
    sources: list[SourceConfig] = field(default_factory=list)
    source_temperature: Optional[float] = None
    train_split: str = "train"
    valid_split: str = "valid"
    # Shard URL override: glob, brace pattern or `pipe:` command list; None = from the manifest.
    train_urls: Optional[str] = None
    valid_urls: Optional[str] = None
    max_seq_len: int = 128
    micro_batch_size: int = 32          # per rank, per micro-step
    num_workers: Optional[int] = None   # DataLoader workers per rank (0 = in the main process); None = from the CPUs per rank
    prefetch_factor: int = 2
    short_seq_prob: float = 0.1
    packing: bool = True                # several examples per row (docs/data.md "Packing")
    pack_lookahead: int = 64            # examples the packer holds to fill rows (>= 1)
    seed: int = 1234


@dataclass
class ObjectiveConfig:
    # pretrain/objectives: a registered name (auto | mlm | mlm_sop | mlm_nsp | electra | distill) or module:Class;
    # auto = masked-LM plus the sentence task of model.sentence_head.
    name: str = "auto"
    mlm_probability: float = 0.15
    eval_mlm_probability: float = 0.15  # the validation loader's rate (eval/mlm_acc comparable across recipes)
    mask_token_prob: float = 0.8        # of selected: -> [MASK]
    random_token_prob: float = 0.1      # of selected: -> random token (rest kept)
    masking: str = "token"              # "token" | "whole_word" | "span"
    span_geometric_p: float = 0.2       # SpanBERT
    span_max_length: int = 10
    sentence_task: str = "sop"          # "sop" | "nsp" | "none"
    mlm_weight: float = 1.0
    sentence_weight: float = 1.0
    # ELECTRA (objective=electra): the generator's hidden size as a fraction of the model's (whole
    # attention heads of the model's head size), and the weight of the replaced-token loss.
    generator_hidden_fraction: float = 0.25
    disc_weight: float = 50.0
    # Distillation (objective=distill, pretrain/objectives/distill.py): the frozen teacher (a
    # Hugging Face masked-LM directory or one of our run directories), whether a fresh student of
    # its shape starts from its every other layer, and DistilBERT's loss (T, KL and cosine weights).
    teacher: Optional[str] = None
    init_from_teacher: bool = True
    distill_temperature: float = 2.0
    distill_kl_weight: float = 5.0
    distill_cos_weight: float = 1.0
