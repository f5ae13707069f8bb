"""One transformer encoder layer (attention + feed-forward, post-LN) in pipeline-tuple form."""
from __future__ import annotations

from torch import nn

from .activations import activation
from .attention import SelfAttention
from .config import ModelConfig


class EncoderLayer(nn.Module):
    """(hidden [B,L,H], key_mask, labels) -> (new hidden [B,L,H], key_mask, labels).

    The mask and labels ride along untouched so a list of these layers composes with the
    embeddings and heads into the full model (and into DeepSpeed pipeline stages).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.ffn_in = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = activation(cfg.hidden_act)
        self.ffn_out = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, inputs):
        x, key_mask, labels = inputs
        x = self.attention(x, key_mask)
        x = self.ffn_norm(x + self.dropout(self.ffn_out(self.act(self.ffn_in(x)))))
        return x, key_mask, labels


class Encoder(nn.Module):
    """The stack of layers. BERT: `num_layers` distinct layers. ALBERT: `num_hidden_groups`
    groups of `inner_group_num` layers; layer application i uses group
    floor(i * groups / num_layers) and runs all its inner layers (HF's AlbertTransformer order).

    `ordered()` lists the layer applications in order; with ALBERT the same module object appears
    several times (shared weights).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.arch = cfg.arch
        if cfg.arch == "bert":
            self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
            self._order = list(range(cfg.num_layers))
        else:
            groups, inner = cfg.num_hidden_groups, cfg.inner_group_num
            if not 1 <= groups <= cfg.num_layers:
                raise ValueError(f"model.num_hidden_groups={groups} must be in [1, num_layers={cfg.num_layers}]")
            self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(groups * inner))
            self._order = [
                int(i / (cfg.num_layers / groups)) * inner + j for i in range(cfg.num_layers) for j in range(inner)
            ]

    def ordered(self) -> list[nn.Module]:
        return [self.layers[i] for i in self._order]
