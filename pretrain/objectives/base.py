"""What every pretraining objective declares, so that nothing else knows any objective's names.

An objective (one module each under pretrain/objectives/, registered in __init__.py) says:
  sentence_head   the model head it needs ("none", "sop", "nsp"): checked against model.sentence_head
  data_task       the sentence task the loader builds examples for ("none", "sop", "nsp"); with the
                  objective config's masking options, the batch fields the loader must make
  loss_fields     the batch fields its loss reads besides the model output (the pipeline engine
                  ships exactly these from the first stage's batch to its last stage)
  normalizers     the names of the global counts its loss divides by; `counts(batch)` gives one
                  micro-batch's share (a float64 vector, no host read), the engine sums them over
                  micro-batches and ranks in one collective and passes the vector to `loss`
  stat_keys       the sums `loss` returns (0-dim device tensors), reduced by the engine in the
                  step's one all-reduce
  metrics         name = numerator / denominator over those sums, logged as train/<name> and
                  eval/<name> (exact over the global batch: sums are reduced before dividing);
                  a metric whose denominator sums to 0 is not logged
  eval_loss       which metrics add up to eval/loss; `shown` the ones the log lines print
  forward_flops   the step's matmul FLOPs (for MFU), the model's own by default
The engines call `counts` and `loss` (parallel/engine_base.py "objective" protocol); the loop,
evaluation, tracker and status read the declarations.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Mapping, Optional, Sequence

import torch

from pretrain.model.config import ModelConfig


@dataclass(frozen=True)
class Metric:
    """A ratio of two summed stats: `numerator` / `denominator`."""
    name: str
    numerator: str
    denominator: str

    def value(self, totals: Mapping[str, float]) -> Optional[float]:
        den = float(totals.get(self.denominator, 0.0) or 0.0)
        return None if den <= 0 else float(totals.get(self.numerator, 0.0)) / den


def masked_and_real_tokens(batch: dict) -> torch.Tensor:
    """[masked positions, real tokens] of one micro-batch (float64, on the labels' device): the
    normalizers of objectives that score masked positions and every real token."""
    labels = batch["labels"]
    masked = (labels != -100).sum().double()
    mask = batch.get("attention_mask")
    real = mask.sum().double() if mask is not None else torch.tensor(float(labels.numel()), dtype=torch.float64)
    return torch.stack([masked, real.to(masked.device)])


class Objective(ABC):
    name: ClassVar[str]
    sentence_head: ClassVar[str] = "none"
    data_task: ClassVar[str] = "none"
    loss_fields: ClassVar[tuple[str, ...]] = ()
    normalizers: ClassVar[tuple[str, ...]]
    stat_keys: ClassVar[tuple[str, ...]]
    metrics: ClassVar[tuple[Metric, ...]]
    eval_loss_metrics: ClassVar[tuple[str, ...]] = ()
    shown: ClassVar[tuple[str, ...]] = ()
    eval_totals: ClassVar[dict[str, str]] = {}   # eval/<name> = the summed stat (e.g. how many predictions)

    def __init__(self, cfg, model_cfg: ModelConfig):
        """cfg: the objective config (pretrain.data.config.ObjectiveConfig: masking, weights)."""
        self.cfg = cfg
        self.model_cfg = model_cfg

    # ---------------------------------------------------------------- what the engine calls
    @abstractmethod
    def counts(self, batch: dict) -> torch.Tensor:
        """[len(normalizers)] float64: this micro-batch's share of the global normalizers."""

    @abstractmethod
    def loss(self, output, batch: dict, normalizers: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(scalar loss, {stat key: 0-dim tensor sum}) of one micro-batch; `normalizers` are the
        global counts (>= 1) in the order of `normalizers`."""

    def __call__(self, output, batch: dict, normalizers: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self.loss(output, batch, normalizers)

    # ---------------------------------------------------------------- the model side (optional)
    def build_modules(self, model) -> dict:
        """{name: nn.Module}: this objective's own trainable modules (heads, a generator),
        attached to the model as `model.objective_modules[name]` before the engine is built, so
        they are optimised, checkpointed and partitioned with it. None by default."""
        return {}

    def forward(self, model, **inputs):
        """The training/eval forward when the objective needs more than the model's heads: called
        by `model.forward` with the batch's model inputs; use `model.encode(...)`,
        `model.heads(...)` and `model.objective_modules` and return what `loss` reads."""
        raise NotImplementedError

    def export(self, model, tokenizer_file: str, out_dir: str, log) -> None:
        """Write the run's transformers export (pretrain/train/export.py calls it with the model,
        its objective modules loaded): the model with its heads by default; the objective's own
        modules are not part of it."""
        from pretrain.hf.export import export_hf

        if len(model.objective_modules):
            log(f"export: the encoder and its heads; the objective's own modules "
                f"({', '.join(model.objective_modules)}) stay in the checkpoint")
        export_hf(model, model.cfg, tokenizer_file, out_dir)

    def initialize(self, model) -> Optional[str]:
        """Set up a fresh model's weights before training (e.g. a student from its teacher); called
        once per run, before the engine, only when no checkpoint will be loaded. Returns a line for
        the log, or None. Nothing by default."""
        return None

    def preflight(self, tokenizer_sha256: str) -> None:
        """Checks that read files (run once by the launcher before any rank starts; the data's
        tokenizer fingerprint given): one-line ValueErrors. Nothing by default."""

    def check_parallel(self, zero_stage: int, pipeline_stages: int) -> None:
        """One-line errors for a layout this objective cannot train in (checked with the config)."""

    def has_own_forward(self) -> bool:
        return type(self).forward is not Objective.forward

    # ---------------------------------------------------------------- what the loop reads
    def summarize(self, totals: Mapping[str, float], prefix: str) -> dict[str, float]:
        """`prefix`/<metric> for every metric with a non-zero denominator."""
        out = {}
        for metric in self.metrics:
            value = metric.value(totals)
            if value is not None:
                out[f"{prefix}/{metric.name}"] = value
        return out

    def evaluation(self, totals: Mapping[str, float]) -> dict[str, float]:
        """eval/<metric> for every metric, eval/<total>, and eval/loss = the sum of the
        `eval_loss_metrics` present (e.g. masked-LM loss + sentence loss)."""
        out = self.summarize(totals, "eval")
        out.update({f"eval/{name}": float(totals.get(key, 0.0)) for name, key in self.eval_totals.items()})
        out["eval/loss"] = float(sum(out[f"eval/{m}"] for m in self.eval_loss_metrics if f"eval/{m}" in out))
        return out

    def describe(self) -> dict:
        """What a run directory records of its objective (objective.json), so that pretrain-compare
        and pretrain-status show its metrics without knowing it."""
        return {"name": self.name, "metrics": [m.name for m in self.metrics], "shown": list(self.shown),
                "eval_loss": list(self.eval_loss_metrics), "totals": list(self.eval_totals),
                "primary": f"eval/{self.shown[0]}" if self.shown else "eval/loss"}

    def forward_flops(self, model_cfg: ModelConfig, lengths: Sequence[int], n_masked: float) -> float:
        """Forward matmul FLOPs of examples of these lengths with `n_masked` masked positions."""
        from pretrain.model.flops import forward_flops

        return forward_flops(model_cfg, lengths, n_masked)

    def check(self) -> None:
        """One-line errors for a model that cannot serve this objective."""
        if self.sentence_head != "none" and self.model_cfg.sentence_head == "none":
            raise ValueError(f"objective={self.name} needs a sentence head; model.sentence_head is 'none' "
                             "(objective=mlm trains masked-LM only; objective=auto follows the model)")
