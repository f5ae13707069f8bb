"""conf/model presets are complete ModelConfig mappings with the published shapes."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pretrain.model import ModelConfig, flops_per_sequence
from pretrain.model.pretraining import validate

PRESETS = Path(__file__).resolve().parents[2] / "conf" / "model"
SHAPES = {  # layers, hidden, heads, intermediate, embedding, vocab
    "bert-tiny": (2, 128, 2, 512, None, 30522), "bert-mini": (4, 256, 4, 1024, None, 30522),
    "bert-small": (4, 512, 8, 2048, None, 30522), "bert-medium": (8, 512, 8, 2048, None, 30522),
    "bert-base": (12, 768, 12, 3072, None, 30522), "bert-large": (24, 1024, 16, 4096, None, 30522),
    "albert-base": (12, 768, 12, 3072, 128, 30000), "albert-large": (24, 1024, 16, 4096, 128, 30000),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_preset_is_a_full_valid_model_config(name):
    raw = OmegaConf.load(PRESETS / f"{name}.yaml")
    assert set(raw.keys()) == set(ModelConfig.__dataclass_fields__)  # full mapping, no unknown keys
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), raw))
    validate(cfg)
    got = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, cfg.embedding_size, cfg.vocab_size)
    assert got == SHAPES[name]
    assert cfg.hidden_act == ("gelu_new" if name.startswith("albert") else "gelu")


def test_bert_base_flops_are_about_6_n_params_per_token():
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig),
                                              OmegaConf.load(PRESETS / "bert-base.yaml")))
    # ~85M non-embedding params in the encoder: 6 * N * tokens is the usual rule of thumb.
    per_token = flops_per_sequence(cfg, 128, 0) / 128
    assert 6 * 85e6 < per_token < 6 * 85e6 * 1.1
