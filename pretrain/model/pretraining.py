"""The full pretraining model: embeddings -> encoder layers -> heads, and `build_model`."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .embeddings import Embeddings
from .encoder import Encoder
from .heads import PretrainingHeads, PretrainingOutput

ARCHS = ("bert", "albert")
SENTENCE_HEADS = ("sop", "nsp", "none")


class PretrainingModel(nn.Module):
    """BERT/ALBERT encoder with MLM + sentence-order (or next-sentence) heads.

    forward(...) is exactly the composition of `layers()` (tested), with optional per-layer
    activation checkpointing of the encoder layers in training mode.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.heads = PretrainingHeads(cfg, self.embeddings.word_embeddings)
        self.gradient_checkpointing = cfg.gradient_checkpointing

    def layers(self) -> list[nn.Module]:
        """[embeddings, encoder layer x N, heads]. Each maps a tuple to a tuple:
        (input_ids, token_type_ids, attention_mask, labels) -> (hidden, key_mask, labels) -> ...
        -> PretrainingOutput. ALBERT's shared layer is the same module object N times; the MLM
        decoder shares its Parameter with the word embeddings (a tie across first/last stage)."""
        return [self.embeddings, *self.encoder.ordered(), self.heads]

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        all_positions: bool = False,
    ) -> PretrainingOutput:
        """input_ids/token_type_ids/attention_mask/labels: [B, L] (see docs/architecture.md).
        all_positions=True (or labels=None): mlm_logits at every position, [B, L, V], and
        mlm_labels = labels as given."""
        x = self.embeddings((input_ids, token_type_ids, attention_mask, None if all_positions else labels))
        for layer in self.encoder.ordered():
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        out = self.heads(x)
        if all_positions:
            out = out._replace(mlm_labels=labels)
        return out


def init_weights(module: nn.Module, initializer_range: float) -> None:
    """BERT initialisation: Linear/Embedding weights ~ N(0, initializer_range), biases 0,
    LayerNorm weight 1 / bias 0, the padding row of an embedding 0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=initializer_range)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def validate(cfg: ModelConfig) -> None:
    """One-line errors for config mistakes a user can make."""
    if cfg.arch not in ARCHS:
        raise ValueError(f"model.arch={cfg.arch!r}: expected one of {ARCHS}")
    if cfg.sentence_head not in SENTENCE_HEADS:
        raise ValueError(f"model.sentence_head={cfg.sentence_head!r}: expected one of {SENTENCE_HEADS}")
    if not cfg.vocab_size or cfg.vocab_size <= 0:
        raise ValueError("model.vocab_size is unset: the trainer fills it from the data manifest before build_model")
    if cfg.arch == "bert" and cfg.embedding_size not in (None, cfg.hidden_size):
        raise ValueError(f"model.embedding_size={cfg.embedding_size} needs model.arch=albert (BERT ties it to hidden_size)")
    if cfg.arch == "bert" and (cfg.num_hidden_groups != 1 or cfg.inner_group_num != 1):
        raise ValueError("model.num_hidden_groups / inner_group_num are ALBERT-only; set model.arch=albert")


def build_model(cfg: ModelConfig) -> PretrainingModel:
    """A freshly initialised model (continued pretraining from cfg.init_from is
    `pretrain.hf.export.load_hf_pretrained`, which the trainer calls when init_from is set)."""
    validate(cfg)
    model = PretrainingModel(cfg)
    init_weights(model, cfg.initializer_range)
    return model
