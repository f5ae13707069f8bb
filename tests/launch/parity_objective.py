"""A fourth objective, defined only here (not registered): masked-LM plus predicting whether each
example has an even number of tokens, from its first token's hidden state through a head of its
own. The launch test names it `objective.name=parity_objective:MaskedLMWithParity` and trains,
evaluates and resumes it at world size 2 with no change to the engines, the loop or the tracker:
the worked example of docs/training.md "Objectives"."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.model.heads import PretrainingOutput
from pretrain.objectives import Metric
from pretrain.objectives.mlm import MLM_STATS, MaskedLM, masked_lm_loss


@dataclass
class ParityOutput:
    mlm: PretrainingOutput          # the model's own heads (masked-LM logits at the masked positions)
    parity_logits: torch.Tensor     # [examples, 2]


def example_lengths(batch: dict) -> torch.Tensor:
    """Tokens per example: from the loader's layout (packed rows), else one example per row."""
    if "cu_seqlens" in batch:
        cu = batch["cu_seqlens"]
        return (cu[1:] - cu[:-1]).long()
    return batch["attention_mask"].sum(1).long()


class MaskedLMWithParity(MaskedLM):
    name = "mlm_parity"
    normalizers = ("masked_tokens", "examples")
    stat_keys = MLM_STATS + ("parity_loss_sum", "parity_correct", "parity_count")
    metrics = MaskedLM.metrics + (Metric("parity_loss", "parity_loss_sum", "parity_count"),
                                  Metric("parity_acc", "parity_correct", "parity_count"))
    eval_loss_metrics = ("mlm_loss", "parity_loss")
    shown = ("mlm_acc", "parity_acc")

    def build_modules(self, model) -> dict:
        return {"parity": nn.Linear(model.cfg.hidden_size, 2)}

    def forward(self, model, *, input_ids, token_type_ids=None, attention_mask=None, labels=None, position_ids=None,
                all_positions=False, **layout):
        hidden, ctx = model.encode(input_ids, token_type_ids, attention_mask, position_ids,
                                   unpad=model.cfg.unpad and labels is not None, **layout)
        out = model.heads(hidden, ctx, labels)
        return ParityOutput(out, model.objective_modules["parity"](ctx.first_tokens(hidden)))

    def counts(self, batch: dict) -> torch.Tensor:
        masked = super().counts(batch)
        return torch.cat([masked, torch.tensor([float(example_lengths(batch).numel())], dtype=torch.float64,
                                                device=masked.device)])

    def loss(self, output: ParityOutput, batch: dict, normalizers: torch.Tensor):
        loss, stats = masked_lm_loss(output.mlm, batch, normalizers[0], self.cfg.mlm_weight, None)
        target = example_lengths(batch).to(output.parity_logits.device) % 2
        logits = output.parity_logits.float()
        ce = F.cross_entropy(logits, target, reduction="sum")
        with torch.no_grad():
            correct = (logits.argmax(-1) == target).sum()
        stats = {k: stats[k] for k in MLM_STATS}
        stats.update(parity_loss_sum=ce.detach().double(), parity_correct=correct.double(),
                     parity_count=torch.tensor(float(target.numel()), dtype=torch.float64, device=logits.device))
        return loss + ce / normalizers[1], stats
