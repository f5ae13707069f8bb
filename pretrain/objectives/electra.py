"""ELECTRA replaced-token detection (Clark et al., 2020): a discriminator trained on every token.

A small generator (a masked LM of the model's architecture, `generator_hidden_fraction` of its
hidden size, the same depth, whole attention heads of the model's head size) reads the masked
batch and predicts the masked tokens; a token is sampled from its softmax at every masked position
by inverse CDF with the batch's `sample_uniform` (one number per masked position from the
example's own stream: pretrain/data/masking.py), so a sample depends on the example alone, the
same after a resume, at any world size (a batch without it, not from our loader, samples by
Gumbel-max from the RNG the engine seeds per step, micro-batch and rank); the model itself, the discriminator, reads the corrupted batch
and predicts for every real token whether it was replaced (a sampled token equal to the original
counts as not replaced, as in the paper). Generator and discriminator share the token, position
and token-type embeddings (one tensor: one gradient, one optimizer state); the generator projects
them to its width (transformers' ElectraModel `embeddings_project`) and its MLM decoder is tied
to the shared table.

loss = mlm_weight x generator CE(masked) / global masked count
       + disc_weight x BCE(every real token) / global real-token count
The model's own MLM and sentence heads are not used (the discriminator head is this objective's).
"""
from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.model.activations import activation
from pretrain.model.config import ModelConfig
from pretrain.model.heads import MLMHead, PretrainingOutput
from pretrain.model.layout import IGNORE_INDEX

from .base import Metric, Objective, masked_and_real_tokens

STATS = ("mlm_loss_sum", "mlm_correct", "mlm_count", "disc_loss_sum", "disc_correct", "disc_count",
         "disc_true_pos", "disc_pred_pos", "disc_replaced")


class ElectraOutput(NamedTuple):
    """A NamedTuple (ZeRO-3 finds tensors in tuples). generator: the generator's output (logits
    at the masked positions); disc_logits / replaced / valid: [T] (unpadded) or [B, L] each."""
    generator: PretrainingOutput
    disc_logits: torch.Tensor
    replaced: torch.Tensor
    valid: torch.Tensor


def generator_config(cfg: ModelConfig, fraction: float) -> ModelConfig:
    """The generator's shape: `fraction` of the hidden size in whole heads of the model's head
    size, the same depth, the feed-forward width scaled alike (its MLM head outputs the shared
    embedding width: `Electra.build_modules`)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"objective.generator_hidden_fraction={fraction}: must be in (0, 1]")
    head_dim = cfg.hidden_size // cfg.num_heads
    heads = max(1, round(cfg.num_heads * fraction))
    hidden = heads * head_dim
    return replace(cfg, hidden_size=hidden, num_heads=heads, sentence_head="none", init_from=None,
                   intermediate_size=max(1, round(cfg.intermediate_size * hidden / cfg.hidden_size)))


class SharedEmbeddings(nn.Module):
    """The model's embedding module (shared, not copied) followed by a projection to the
    generator's width."""

    def __init__(self, shared: nn.Module, width_in: int, width_out: int):
        super().__init__()
        self.shared = shared
        self.project = nn.Linear(width_in, width_out)
        self.word_embeddings = shared.word_embeddings

    def forward(self, inputs, ctx=None):
        return self.project(self.shared(inputs, ctx))


class DiscriminatorHead(nn.Module):
    """dense -> act -> dense to one logit per token (transformers' ElectraDiscriminatorPredictions)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = activation(cfg.hidden_act)
        self.dense_prediction = nn.Linear(cfg.hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dense_prediction(self.act(self.dense(hidden))).squeeze(-1)


def inverse_cdf_sample(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row of logits [M, V] from softmax(logits), using uniform [M] in [0, 1): the
    first token whose cumulative probability exceeds it. No host sync."""
    cdf = torch.cumsum(torch.softmax(logits.float(), dim=-1), dim=-1)
    u = uniform.to(device=cdf.device, dtype=cdf.dtype).reshape(-1, 1) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=logits.shape[-1] - 1)


def gumbel_sample(logits: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One token per row from softmax(logits), as argmax(logits + Gumbel noise): no host sync."""
    u = torch.rand(logits.shape, device=logits.device, generator=generator).clamp_(1e-9, 1.0 - 1e-9)
    return (logits.float() - torch.log(-torch.log(u))).argmax(-1)


class Electra(Objective):
    name = "electra"
    normalizers = ("masked_tokens", "real_tokens")
    stat_keys = STATS
    metrics = (Metric("mlm_loss", "mlm_loss_sum", "mlm_count"), Metric("mlm_acc", "mlm_correct", "mlm_count"),
               Metric("disc_loss", "disc_loss_sum", "disc_count"), Metric("disc_acc", "disc_correct", "disc_count"),
               Metric("disc_precision", "disc_true_pos", "disc_pred_pos"),
               Metric("disc_recall", "disc_true_pos", "disc_replaced"),
               Metric("replaced_fraction", "disc_replaced", "disc_count"))
    eval_loss_metrics = ("mlm_loss", "disc_loss")
    shown = ("disc_acc", "mlm_acc", "disc_recall")
    eval_totals = {"masked_tokens": "mlm_count"}
    EVAL_SEED = 20201

    def __init__(self, cfg, model_cfg: ModelConfig):
        super().__init__(cfg, model_cfg)
        self.generator_cfg = generator_config(model_cfg, float(getattr(cfg, "generator_hidden_fraction", 0.25)))
        self.disc_weight = float(getattr(cfg, "disc_weight", 50.0))

    # ---------------------------------------------------------------- modules and forward
    def build_modules(self, model) -> dict:
        from pretrain.model import build_model

        generator = build_model(self.generator_cfg)
        shared = model.embeddings   # its output is the model's hidden width whatever the architecture
        generator.embeddings = SharedEmbeddings(shared, model.cfg.hidden_size, self.generator_cfg.hidden_size)
        # Its MLM head maps to the shared table's width and decodes with that table (tied).
        width = shared.word_embeddings.embedding_dim
        head = MLMHead(replace(self.generator_cfg, embedding_size=width), shared.word_embeddings)
        nn.init.normal_(head.dense.weight, std=self.generator_cfg.initializer_range)
        if head.dense.bias is not None:
            nn.init.zeros_(head.dense.bias)
        generator.heads.mlm = head
        return {"generator": generator, "discriminator": DiscriminatorHead(model.cfg)}

    def forward(self, model, *, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                position_ids=None, all_positions=False, **layout) -> ElectraOutput:
        if labels is None or all_positions:
            raise ValueError("objective=electra trains on labelled batches (masked positions)")
        generator = model.objective_modules["generator"]
        unpad = model.cfg.unpad
        hidden, ctx = generator.encode(input_ids, token_type_ids, attention_mask, position_ids, unpad=unpad, **layout)
        gen_out = generator.heads(hidden, ctx, labels)
        flat = layout.get("masked_index")
        if flat is None:
            flat = torch.nonzero(labels.reshape(-1) != IGNORE_INDEX).squeeze(1)
        flat = flat.to(input_ids.device)
        uniform = layout.get("sample_uniform")
        with torch.no_grad():
            if uniform is not None:
                sampled = inverse_cdf_sample(gen_out.mlm_logits.detach(), uniform)
            else:
                rng = None
                if not model.training:   # evaluation: the same replacements every time
                    rng = torch.Generator(device=input_ids.device).manual_seed(self.EVAL_SEED)
                sampled = gumbel_sample(gen_out.mlm_logits.detach(), rng)
            corrupted = input_ids.reshape(-1).index_copy(0, flat, sampled).view_as(input_ids)
            replaced = torch.zeros(input_ids.numel(), dtype=torch.bool, device=input_ids.device)
            replaced = replaced.index_copy(0, flat, sampled != gen_out.mlm_labels).view_as(input_ids)
        # The same rows: the generator's context (layout on the device, masks, rotary tables) serves.
        d_hidden, _ = model.encode(corrupted, token_type_ids, ctx=ctx)
        logits = model.objective_modules["discriminator"](model.heads.final_norm(d_hidden))
        return ElectraOutput(gen_out, logits, ctx.to_layout(replaced), ctx.to_layout(ctx.valid))

    def export(self, model, tokenizer_file: str, out_dir: str, log) -> None:
        """BERT-shaped: the discriminator as transformers' ElectraForPreTraining in out_dir and the
        generator as ElectraForMaskedLM in out_dir/generator (pretrain/hf/electra.py). Otherwise
        (ModernBERT, ALBERT): the encoder in the architecture's usual export (its MLM head is not
        trained by ELECTRA: do not use its masked-LM logits) plus the discriminator head's
        weights in discriminator_head.safetensors."""
        from pretrain.hf.electra import check_exportable, export_electra
        from pretrain.hf.errors import ExportError

        try:
            check_exportable(model.cfg, self.generator_cfg)
        except ExportError as e:
            from safetensors.torch import save_file

            from pretrain.hf.export import export_hf

            log(f"warning: {e}; exporting the discriminator's encoder as {model.cfg.arch} (its MLM head is "
                "untrained under ELECTRA) and its head as discriminator_head.safetensors")
            export_hf(model, model.cfg, tokenizer_file, out_dir)
            head = model.objective_modules["discriminator"]
            save_file({k: v.detach().float().contiguous() for k, v in head.state_dict().items()},
                      f"{out_dir}/discriminator_head.safetensors")
            return
        export_electra(model, tokenizer_file, out_dir)
        log(f"export: the discriminator as ElectraForPreTraining ({out_dir}), the generator as ElectraForMaskedLM "
            f"({out_dir}/generator)")

    # ---------------------------------------------------------------- loss
    def counts(self, batch: dict) -> torch.Tensor:
        return masked_and_real_tokens(batch)

    def loss(self, output: ElectraOutput, batch: dict, normalizers: torch.Tensor):
        gen = output.generator
        g_logits = gen.mlm_logits.float()
        mlm_sum = F.cross_entropy(g_logits, gen.mlm_labels, ignore_index=IGNORE_INDEX, reduction="sum")
        d_logits = output.disc_logits.float()
        target = output.replaced.to(d_logits.dtype)
        valid = output.valid.to(d_logits.dtype)
        disc_sum = (F.binary_cross_entropy_with_logits(d_logits, target, reduction="none") * valid).sum()
        loss = self.cfg.mlm_weight * mlm_sum / normalizers[0] + self.disc_weight * disc_sum / normalizers[1]
        with torch.no_grad():
            ok = output.valid.bool()
            predicted = (d_logits > 0) & ok
            actual = output.replaced.bool() & ok
            stats = {
                "mlm_loss_sum": mlm_sum.detach(),
                "mlm_correct": ((g_logits.argmax(-1) == gen.mlm_labels) & (gen.mlm_labels != IGNORE_INDEX)).sum(),
                "mlm_count": (gen.mlm_labels != IGNORE_INDEX).sum(),
                "disc_loss_sum": disc_sum.detach(),
                "disc_correct": ((predicted == actual) & ok).sum(),
                "disc_count": ok.sum(),
                "disc_true_pos": (predicted & actual).sum(),
                "disc_pred_pos": predicted.sum(),
                "disc_replaced": actual.sum(),
            }
        return loss, {k: v.double() for k, v in stats.items()}

    # ---------------------------------------------------------------- FLOPs
    def forward_flops(self, model_cfg: ModelConfig, lengths: Sequence[int], n_masked: float) -> float:
        """Generator (projection, encoder, MLM head at the masked positions) + discriminator
        (encoder, per-token head)."""
        from pretrain.model import registry

        g, d, tokens = self.generator_cfg, model_cfg, float(sum(lengths))
        e = d.embedding_size or d.hidden_size
        generator = (2 * tokens * d.hidden_size * g.hidden_size + registry.get(g.arch).encoder_flops(g, lengths)
                     + 2 * n_masked * g.hidden_size * e + 2 * n_masked * e * g.vocab_size)
        discriminator = (registry.get(d.arch).encoder_flops(d, lengths)
                         + 2 * tokens * d.hidden_size * d.hidden_size + 2 * tokens * d.hidden_size)
        return float(generator + discriminator)
