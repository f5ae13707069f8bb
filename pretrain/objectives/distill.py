"""Knowledge distillation (DistilBERT, Sanh et al. 2019): a student learns from a frozen teacher.

The model being trained is the student; `objective.teacher` names the teacher: a Hugging Face
masked-LM directory of a registered architecture (our export, or transformers' Bert/Albert/
ModernBert checkpoints), or one of our run directories (its `export/`). The teacher reads the
same rows as the student, reusing the student's attention context (the layout, masks and rotary
tables are made once), under torch.no_grad, in eval mode, in the student's dtype; it is held by
this objective, not registered in the model: it gets no gradient, no optimizer state, and is not
in the student's checkpoints (it is loaded again, read-only, on resume).

loss = kl_weight x T^2 x KL(teacher_T || student_T) at the masked positions / global masked count
     + mlm_weight x CE(student, labels) / global masked count
     + cos_weight x (1 - cos(student last hidden, teacher last hidden)) over real tokens / global real count
(DistilBERT: 5, 2, 1 at T = 2.) KL compares the two distributions over the ids both vocabularies
hold (a padded vocabulary's extra rows are no token). The cosine term needs one hidden size (else
set its weight to 0). `init_from_teacher`: a fresh student of the teacher's architecture and
width starts from the teacher's embeddings, heads and every other layer (student layer i <-
teacher layer i x teacher depth / student depth).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

from pretrain.model.config import ModelConfig
from pretrain.model.heads import PretrainingOutput
from pretrain.model.layout import IGNORE_INDEX

from .base import Metric, Objective, masked_and_real_tokens

STATS = ("mlm_loss_sum", "mlm_correct", "mlm_count", "kl_sum", "cos_sum", "cos_count", "agree", "teacher_correct")


class DistillOutput(NamedTuple):
    """A NamedTuple (ZeRO finds tensors in tuples). student: the student's output (logits at the
    masked positions); teacher_logits: the teacher's at the same positions; hidden / teacher_hidden /
    valid: last hidden states [T, H] (unpadded) or [B, L, H], and which positions are real tokens."""
    student: PretrainingOutput
    teacher_logits: torch.Tensor
    hidden: torch.Tensor
    teacher_hidden: torch.Tensor
    valid: torch.Tensor


def teacher_directory(path: str) -> str:
    """The Hugging Face directory to load: `path` itself, or a run directory's `export/`."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    if os.path.isfile(os.path.join(path, "config.yaml")):
        export = os.path.join(path, "export")
        if os.path.isfile(os.path.join(export, "config.json")):
            return export
        raise ValueError(f"objective.teacher={path!r} is a run directory without an export; run "
                         f"pretrain-export {path} first (or let the run finish: it exports at the end)")
    raise ValueError(f"objective.teacher={path!r}: not a Hugging Face model directory (no config.json) "
                     "nor one of our run directories")


def teacher_config(path: str) -> ModelConfig:
    """The teacher's ModelConfig from its config.json alone (no weights read)."""
    from pretrain.hf.errors import ExportError
    from pretrain.hf.export import hf_model_config

    try:
        return hf_model_config(teacher_directory(path))
    except ExportError as e:
        raise ValueError(f"objective.teacher={path!r}: {str(e).split(': ', 1)[-1]}") from None


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """The teacher layer each student layer starts from: every other one for half the depth."""
    return [i * teacher_layers // student_layers for i in range(student_layers)]


class Distill(Objective):
    name = "distill"
    normalizers = ("masked_tokens", "real_tokens")
    stat_keys = STATS
    metrics = (Metric("mlm_loss", "mlm_loss_sum", "mlm_count"), Metric("mlm_acc", "mlm_correct", "mlm_count"),
               Metric("kl_loss", "kl_sum", "mlm_count"), Metric("cos_loss", "cos_sum", "cos_count"),
               Metric("agreement", "agree", "mlm_count"), Metric("teacher_mlm_acc", "teacher_correct", "mlm_count"))
    eval_loss_metrics = ("mlm_loss",)   # eval/loss compares with any other run's
    shown = ("mlm_acc", "agreement", "kl_loss")
    eval_totals = {"masked_tokens": "mlm_count"}

    def __init__(self, cfg, model_cfg: ModelConfig):
        super().__init__(cfg, model_cfg)
        self.teacher_path = getattr(cfg, "teacher", None)
        self.temperature = float(getattr(cfg, "distill_temperature", 2.0))
        self.kl_weight = float(getattr(cfg, "distill_kl_weight", 5.0))
        self.cos_weight = float(getattr(cfg, "distill_cos_weight", 1.0))
        self.mlm_weight = float(cfg.mlm_weight)
        self.init_from_teacher = bool(getattr(cfg, "init_from_teacher", True))
        self._teacher = None
        self._teacher_cfg: Optional[ModelConfig] = None

    # ---------------------------------------------------------------- checks
    def check(self) -> None:
        super().check()
        if not self.teacher_path:
            raise ValueError("objective=distill needs objective.teacher=<a Hugging Face masked-LM directory or "
                             "one of our run directories>")
        if self.temperature <= 0:
            raise ValueError(f"objective.distill_temperature={self.temperature}: must be > 0")
        for key in ("kl_weight", "cos_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"objective.distill_{key}={getattr(self, key)}: must be >= 0")

    def preflight(self, tokenizer_sha256: str) -> None:
        """The teacher is a model directory with the data's tokenizer, and fits the losses asked for."""
        from tokenizers import Tokenizer

        from pretrain.shardformat import tokenizer_fingerprint

        teacher = self.teacher_cfg
        path = os.path.join(teacher_directory(self.teacher_path), "tokenizer.json")
        if not os.path.isfile(path):
            raise ValueError(f"objective.teacher={self.teacher_path!r} has no tokenizer.json to check the data against")
        if tokenizer_fingerprint(Tokenizer.from_file(path)) != tokenizer_sha256:
            raise ValueError(f"objective.teacher: {path} differs from the tokenizer of the training data "
                             "(a teacher must read the same token ids as its student)")
        if self.cos_weight and teacher.hidden_size != self.model_cfg.hidden_size:
            raise ValueError(f"objective.distill_cos_weight={self.cos_weight} compares hidden states, but the teacher's "
                             f"hidden_size {teacher.hidden_size} != the student's {self.model_cfg.hidden_size}; "
                             "set objective.distill_cos_weight=0")

    def check_parallel(self, zero_stage: int, pipeline_stages: int) -> None:
        if zero_stage == 3:
            raise ValueError("objective=distill keeps the teacher whole on every rank (it is not a part of the "
                             "model ZeRO partitions); use parallel.zero_stage <= 2")

    @property
    def teacher_cfg(self) -> ModelConfig:
        if self._teacher_cfg is None:
            self._teacher_cfg = teacher_config(self.teacher_path)
        return self._teacher_cfg

    # ---------------------------------------------------------------- the teacher
    def teacher(self):
        """The frozen teacher (loaded on first use; our model of its architecture)."""
        if self._teacher is None:
            from pretrain.hf.export import load_hf_pretrained

            model, _ = load_hf_pretrained(teacher_directory(self.teacher_path))
            model.eval().requires_grad_(False)
            self._teacher = model
        return self._teacher

    def _teacher_like(self, reference: torch.Tensor):
        teacher = self.teacher()
        weight = teacher.embeddings.word_embeddings.weight
        if weight.device != reference.device or weight.dtype != reference.dtype:
            teacher.to(device=reference.device, dtype=reference.dtype)
        return teacher

    def initialize(self, model) -> Optional[str]:
        """A fresh student starts from the teacher (init_from_teacher, when the shapes allow)."""
        if not self.init_from_teacher:
            return None
        student, teacher_cfg = model.cfg, self.teacher_cfg
        same = ("arch", "hidden_size", "num_heads", "intermediate_size", "vocab_size", "embedding_size",
                "max_position_embeddings", "type_vocab_size", "hidden_act", "linear_bias", "norm_bias")
        differ = [k for k in same if getattr(student, k) != getattr(teacher_cfg, k)]
        if differ or student.num_layers > teacher_cfg.num_layers:
            raise ValueError(f"objective.init_from_teacher=true needs the teacher's shape with at most its depth; "
                             f"{differ[0] if differ else 'num_layers'} differs ({getattr(student, differ[0] if differ else 'num_layers')} "
                             f"vs the teacher's {getattr(teacher_cfg, differ[0] if differ else 'num_layers')}); "
                             "set objective.init_from_teacher=false")
        teacher = self.teacher()
        mapping = layer_map(student.num_layers, teacher_cfg.num_layers)
        with torch.no_grad():
            model.embeddings.load_state_dict(teacher.embeddings.state_dict())
            model.heads.load_state_dict(teacher.heads.state_dict(), strict=False)
            for i, j in enumerate(mapping):
                model.encoder.ordered()[i].load_state_dict(teacher.encoder.ordered()[j].state_dict())
        self.initialized_from = mapping
        return (f"distill: student initialised from the teacher's layers {mapping} (of {teacher_cfg.num_layers}), "
                "embeddings and heads")

    # ---------------------------------------------------------------- forward
    def forward(self, model, *, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                position_ids=None, all_positions=False, **layout) -> DistillOutput:
        if labels is None or all_positions:
            raise ValueError("objective=distill trains on labelled batches (masked positions)")
        hidden, ctx = model.encode(input_ids, token_type_ids, attention_mask, position_ids, unpad=model.cfg.unpad,
                                   **layout)
        out = model.heads(hidden, ctx, labels)
        teacher = self._teacher_like(hidden)
        with torch.no_grad():
            t_hidden, _ = teacher.encode(input_ids, token_type_ids, ctx=ctx)
            t_logits = teacher.heads(t_hidden, ctx, labels).mlm_logits
        return DistillOutput(out, t_logits, hidden, t_hidden, ctx.to_layout(ctx.valid))

    def forward_flops(self, model_cfg: ModelConfig, lengths: Sequence[int], n_masked: float) -> float:
        """The student's forward, plus the teacher's forward as a third (the caller counts the
        student's backward as twice its forward: 3 x this; the teacher runs no backward)."""
        from pretrain.model.flops import forward_flops

        return forward_flops(model_cfg, lengths, n_masked) + forward_flops(self.teacher_cfg, lengths, n_masked) / 3.0

    # ---------------------------------------------------------------- loss
    def counts(self, batch: dict) -> torch.Tensor:
        return masked_and_real_tokens(batch)

    def loss(self, output: DistillOutput, batch: dict, normalizers: torch.Tensor) -> tuple[torch.Tensor, dict]:
        s_logits = output.student.mlm_logits.float()
        labels = output.student.mlm_labels
        vocab = min(s_logits.shape[-1], output.teacher_logits.shape[-1])
        s, t = s_logits[:, :vocab], output.teacher_logits.float()[:, :vocab]
        T = self.temperature
        masked, real = normalizers[0].float().clamp_min(1.0), normalizers[1].float().clamp_min(1.0)
        ce = F.cross_entropy(s_logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        kl = F.kl_div(F.log_softmax(s / T, dim=-1), F.log_softmax(t / T, dim=-1), log_target=True,
                      reduction="sum") * (T * T)
        loss = self.mlm_weight * ce / masked + self.kl_weight * kl / masked
        valid = output.valid.reshape(-1)
        cos_sum = torch.zeros((), device=s.device)
        if self.cos_weight:
            h = output.hidden.reshape(-1, output.hidden.shape[-1]).float()
            th = output.teacher_hidden.reshape(-1, output.teacher_hidden.shape[-1]).float()
            cos_sum = ((1.0 - F.cosine_similarity(h, th, dim=-1)) * valid).sum()
            loss = loss + self.cos_weight * cos_sum / real
        with torch.no_grad():
            ok = labels != IGNORE_INDEX
            student_pred, teacher_pred = s_logits.argmax(-1), t.argmax(-1)
            stats = {
                "mlm_loss_sum": ce.detach(), "mlm_correct": ((student_pred == labels) & ok).sum(),
                "mlm_count": ok.sum(), "kl_sum": kl.detach(), "cos_sum": cos_sum.detach(),
                "cos_count": valid.sum(), "agree": ((student_pred == teacher_pred) & ok).sum(),
                "teacher_correct": ((teacher_pred == labels) & ok).sum(),
            }
        return loss, {k: v.double() for k, v in stats.items()}
