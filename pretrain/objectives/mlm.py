"""Masked-LM objectives: MLM alone (RoBERTa), MLM + sentence-order prediction (ALBERT), MLM +
next-sentence prediction (BERT); the loss and the metric sums the trainer aggregates.

The MLM loss is normalised by a count the *caller* provides: the number of masked tokens in the
whole global batch (all data-parallel ranks and all micro-batches of the step), so the loss is a
mean over the global batch, not a mean of per-rank means. Computing that count needs an
all-reduce, which belongs to `parallel/` (the engine); this module stays collective-free.
Note for the engine: DeepSpeed divides gradients by the data-parallel world size and by
gradient_accumulation_steps, so to get d(sum CE / global count) the engine must undo that
(e.g. pass mlm_normalizer = global_count / (world_size * grad_accum)).
For a single local batch, mlm_normalizer = number of masked tokens gives HF's mean CE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain.data.config import ObjectiveConfig
from pretrain.model.heads import PretrainingOutput
from pretrain.model.layout import IGNORE_INDEX

from .base import Metric, Objective

MLM_STATS = ("mlm_loss_sum", "mlm_correct", "mlm_count")
SENTENCE_STATS = ("sentence_loss_sum", "sentence_correct", "sentence_count")
STAT_KEYS = MLM_STATS + SENTENCE_STATS


def sentence_targets(out: PretrainingOutput, sentence_label: torch.Tensor) -> torch.Tensor:
    """The labels of the examples whose logits `out.sentence_logits` holds, in their order: a [N]
    label vector as it is (one label per example, the loader's form: one example per row, or the
    examples of packed rows in row-major order), a [B, L] one (packed rows) read at the examples'
    first tokens, `out.sentence_index`."""
    if sentence_label.dim() == 1:
        return sentence_label
    if out.sentence_index is None:
        raise ValueError("a [B, L] sentence_label (packed rows) needs the model's sentence_index: "
                         "give the model the batch's position_ids")
    return sentence_label.reshape(-1).index_select(0, out.sentence_index)


def pretraining_loss(
    out: PretrainingOutput, batch: dict, mlm_normalizer: float | torch.Tensor, cfg: ObjectiveConfig,
    sentence_normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """loss = mlm_weight * sum(CE over masked tokens) / mlm_normalizer
             + sentence_weight * sum(CE over sequences with sentence_label != -100) / sentence_normalizer

    Both normalisers are global counts (all ranks, all micro-batches) when the engine passes
    them, so the gradient is that of the global-batch means; sentence_normalizer=None means
    this micro-batch's own count (a plain mean).

    out: the model output with sparse logits (mlm_logits [n, V], mlm_labels [n]).
    batch: needs "sentence_label" when the model has a sentence head: [B] (one example per row)
    or [B, L] (packed rows: each example's label at its first token; see `sentence_targets`).
    Cross-entropies run in fp32 (logits upcast) whatever the autocast dtype.
    Returns (scalar loss tensor, stats) with stats = 0-dim float64 tensors (on the logits' device)
    holding *sums* over this micro-batch (keys STAT_KEYS); accuracy = correct / count after
    summing across ranks and micro-steps. Nothing here reads a device value on the host.
    """
    return masked_lm_loss(out, batch, mlm_normalizer, cfg.mlm_weight,
                          cfg.sentence_weight if cfg.sentence_task != "none" else None, sentence_normalizer)


def masked_lm_loss(out: PretrainingOutput, batch: dict, mlm_normalizer, mlm_weight: float,
                   sentence_weight: float | None, sentence_normalizer=None) -> tuple[torch.Tensor, dict]:
    """`pretraining_loss` with the weights given; sentence_weight=None: no sentence task."""
    mlm_logits = out.mlm_logits.float()
    mlm_labels = out.mlm_labels
    mlm_loss_sum = F.cross_entropy(mlm_logits, mlm_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    normalizer = torch.as_tensor(mlm_normalizer, dtype=torch.float32, device=mlm_logits.device).clamp_min(1.0)
    loss = mlm_weight * (mlm_loss_sum / normalizer)
    with torch.no_grad():
        valid = mlm_labels != IGNORE_INDEX
        mlm_correct = ((mlm_logits.argmax(-1) == mlm_labels) & valid).sum()
        mlm_count = valid.sum()

    sentence_loss_sum = sentence_correct = sentence_count = torch.zeros((), device=mlm_logits.device)
    if out.sentence_logits is not None and sentence_weight is not None and "sentence_label" in batch:
        s_logits = out.sentence_logits.float()
        s_labels = sentence_targets(out, batch["sentence_label"].to(s_logits.device))
        sentence_loss_sum = F.cross_entropy(s_logits, s_labels, ignore_index=IGNORE_INDEX, reduction="sum")
        with torch.no_grad():
            s_valid = s_labels != IGNORE_INDEX
            sentence_count = s_valid.sum()
            sentence_correct = ((s_logits.argmax(-1) == s_labels) & s_valid).sum()
        s_norm = sentence_count if sentence_normalizer is None else torch.as_tensor(
            sentence_normalizer, dtype=torch.float32, device=s_logits.device)
        loss = loss + sentence_weight * sentence_loss_sum / s_norm.clamp_min(1)

    # 0-dim tensors on the device: the engine sums them over micro-batches and ranks and reads
    # them once per step (its one all-reduce); reading them here would stop a GPU per micro-batch.
    values = (mlm_loss_sum, mlm_correct, mlm_count, sentence_loss_sum, sentence_correct, sentence_count)
    stats = {k: t.detach().double() for k, t in zip(STAT_KEYS, values)}
    return loss, stats


def _label_count(batch: dict, key: str) -> torch.Tensor:
    labels = batch.get(key)
    if labels is None:
        return torch.zeros((), dtype=torch.float64)
    return (labels != IGNORE_INDEX).sum().double()


class MaskedLM(Objective):
    """Masked-LM only: loss = mlm_weight * sum CE(masked) / global masked-token count."""
    name = "mlm"
    normalizers = ("masked_tokens",)
    stat_keys = MLM_STATS
    metrics = (Metric("mlm_loss", "mlm_loss_sum", "mlm_count"), Metric("mlm_acc", "mlm_correct", "mlm_count"))
    eval_loss_metrics = ("mlm_loss",)
    shown = ("mlm_acc",)
    eval_totals = {"masked_tokens": "mlm_count"}

    def counts(self, batch: dict) -> torch.Tensor:
        return _label_count(batch, "labels").reshape(1)

    def loss(self, output, batch: dict, normalizers: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss, stats = masked_lm_loss(output, batch, normalizers[0], self.cfg.mlm_weight, None)
        return loss, {k: stats[k] for k in MLM_STATS}


class _MaskedLMWithSentence(MaskedLM):
    """MLM + a sentence-pair task on every example's first token: + sentence_weight * sum CE /
    global sentence-label count."""
    loss_fields = ("sentence_label",)
    normalizers = ("masked_tokens", "sentence_labels")
    stat_keys = STAT_KEYS

    def counts(self, batch: dict) -> torch.Tensor:
        labels = _label_count(batch, "labels")
        return torch.stack([labels, _label_count(batch, "sentence_label").to(labels.device)])

    def loss(self, output, batch: dict, normalizers: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return masked_lm_loss(output, batch, normalizers[0], self.cfg.mlm_weight, self.cfg.sentence_weight,
                              normalizers[1])


def _sentence_metrics(task: str) -> tuple[Metric, ...]:
    return MaskedLM.metrics + (Metric(f"{task}_loss", "sentence_loss_sum", "sentence_count"),
                               Metric(f"{task}_acc", "sentence_correct", "sentence_count"))


class MaskedLMWithSOP(_MaskedLMWithSentence):
    """ALBERT: MLM + sentence-order prediction (two consecutive segments, swapped half the time)."""
    name = "mlm_sop"
    sentence_head = data_task = "sop"
    metrics = _sentence_metrics("sop")
    eval_loss_metrics = ("mlm_loss", "sop_loss")
    shown = ("mlm_acc", "sop_acc")


class MaskedLMWithNSP(_MaskedLMWithSentence):
    """BERT: MLM + next-sentence prediction (the second segment from another document half the time)."""
    name = "mlm_nsp"
    sentence_head = data_task = "nsp"
    metrics = _sentence_metrics("nsp")
    eval_loss_metrics = ("mlm_loss", "nsp_loss")
    shown = ("mlm_acc", "nsp_acc")
