"""Each method trains exactly the parameters its definition says (counted by formula, BERT and
ALBERT), freezes the rest, and leaves the model's function unchanged at initialisation where the
method starts from the identity."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from pretrain.finetune.config import METHODS
from pretrain.finetune.data import LabelMap
from pretrain.finetune.model import build_task_model

H, L, I, HEADS, C = 64, 2, 128, 2, 3   # the tiny backbones (conftest.export_random), 3 labels
MODEL_CFG = OmegaConf.create({"hidden_dropout": None, "attention_dropout": None})


def method(name: str, **kw):
    return OmegaConf.merge(OmegaConf.structured(METHODS[name]), kw)


def build(backbone: str, name: str, **kw):
    return build_task_model(backbone, "classification", LabelMap(False, ["a", "b", "c"]), method(name, **kw),
                            MODEL_CFG, 32, seed=0)


def expected_trainable(arch: str, name: str, mcfg) -> int:
    head = H * C + C                                  # classifier (the export has a pooler)
    layers = L if arch == "bert" else 1               # ALBERT: one shared layer
    emb = 32 if arch == "albert" else H
    if name == "bitfit":
        per_layer = 3 * H + H + H + I + H + H          # q k v, attention out, LN, intermediate, output, LN
        extra = emb + H + (H if arch == "albert" else 0)  # embedding LN, pooler (+ ALBERT's embedding projection)
        return layers * per_layer + extra + head
    if name == "adapter":
        m = mcfg.bottleneck
        return layers * 2 * (2 * H * m + m + H) + layers * 2 * 2 * H + 2 * emb + head
    if name == "prefix":
        return layers * 2 * mcfg.num_virtual_tokens * H + head
    if name == "lora":
        return layers * len(mcfg.target_modules or ["query", "value"]) * 2 * mcfg.r * H + head
    if name == "side":
        s = mcfg.hidden
        per_layer = (3 * s * s + 3 * s) + (s * s + s) + (s * 2 * s + 2 * s) + (2 * s * s + s) + 4 * s
        return (emb * s + s) + mcfg.layers * per_layer + (s * H + H) + 1 + head
    if name == "mask":
        return layers * (4 * H * H + 2 * H * I) + head
    raise AssertionError(name)


@pytest.mark.parametrize("arch", ["bert", "albert"])
@pytest.mark.parametrize("name", ["adapter", "prefix", "lora", "bitfit", "side", "mask"])
def test_trainable_parameters_match_the_definition(random_exports, arch, name):
    small = {"bottleneck": 8, "hidden": 16, "num_virtual_tokens": 4, "r": 4}  # not the presets' sizes
    mcfg = method(name, **{k: v for k, v in small.items() if k in METHODS[name].__dataclass_fields__})
    built = build_task_model(random_exports[arch], "classification", LabelMap(False, ["a", "b", "c"]), mcfg, MODEL_CFG, 32, 0)
    assert built.head == {"classifier.weight", "classifier.bias"}
    assert built.params.trainable == expected_trainable(arch, name, mcfg)
    full = build(random_exports[arch], "full")
    assert full.params.trainable == full.params.base == built.params.base
    assert built.params.fraction == pytest.approx(built.params.trainable / full.params.base)
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    if name != "bitfit":  # every other method leaves every pretrained tensor frozen
        assert not any(n.endswith("word_embeddings.weight") or n.endswith("query.weight") or n.endswith("query.base.weight")
                       for n in trainable)


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
@pytest.mark.parametrize("name", ["adapter", "lora", "side", "mask"])
def test_methods_that_start_from_the_identity_do_not_change_the_backbone_output(random_exports, arch, name):
    """Adapters (W_up = 0), LoRA (B = 0), side (up-projection = 0: h = alpha * h_base) and masks
    (all scores above the threshold) start as the backbone itself (rows longer than ModernBERT's
    8-token local window)."""
    ids = torch.randint(5, 2000, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    plain = build(random_exports[arch], "full").model.eval()
    adapted = build(random_exports[arch], name).model.eval()
    with torch.no_grad():
        a = plain.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        b = adapted.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    if name == "side":
        b = b / adapted.base_model.side_tuning.alpha
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_prefix_changes_attention_and_respects_padding(random_exports, arch):
    """The prefix is attended to (outputs change when it changes) and padding stays masked (a
    padded row equals the same row without padding), also with ModernBERT's local windows."""
    model = build(random_exports[arch], "prefix", num_virtual_tokens=4).model.eval()
    ids = torch.randint(5, 2000, (1, 20))  # longer than ModernBERT's 8-token local window
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 20, dtype=torch.long), torch.zeros(1, 6, dtype=torch.long)], 1)
    with torch.no_grad():
        short = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        long = model(input_ids=padded, attention_mask=mask).logits
        torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)
        for p in model.parameters():
            if p.requires_grad and p.dim() == 3:
                p.add_(0.5)
        moved = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert not torch.allclose(short, moved)

def expected_modernbert(name: str, mcfg) -> int:
    """ModernBERT (bias-free): Wqkv H x 3H, Wo H x H, GeGLU Wi H x 2I, Wo I x H per layer; its
    LayerNorms have weights only: embeddings, layer 1's attention norm (layer 0 has none), both
    MLP norms, the final norm and the classification head's norm."""
    head = H * C + C
    if name == "adapter":
        m = mcfg.bottleneck
        return L * 2 * (2 * H * m + m + H) + 6 * H + head
    if name == "prefix":
        return L * 2 * mcfg.num_virtual_tokens * H + head
    if name == "lora":  # the fused Wqkv: A r x H, B 3H x r
        return L * (mcfg.r * H + 3 * H * mcfg.r) + head
    if name == "side":
        s = mcfg.hidden
        per_layer = (3 * s * s + 3 * s) + (s * s + s) + (s * 2 * s + 2 * s) + (2 * s * s + s) + 4 * s
        return (H * s + s) + mcfg.layers * per_layer + (s * H + H) + 1 + head
    if name == "mask":
        return L * (3 * H * H + H * H + H * 2 * I + I * H) + head
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["adapter", "prefix", "lora", "side", "mask"])
def test_modernbert_backbones_take_every_method_where_its_spec_says(random_exports, name):
    small = {"bottleneck": 8, "hidden": 16, "num_virtual_tokens": 4, "r": 4}
    mcfg = method(name, **{k: v for k, v in small.items() if k in METHODS[name].__dataclass_fields__})
    built = build_task_model(random_exports["modernbert"], "classification", LabelMap(False, ["a", "b", "c"]), mcfg,
                             MODEL_CFG, 32, 0)
    assert built.arch == "modernbert" and not built.token_types
    assert built.head == {"classifier.weight", "classifier.bias"}
    assert built.params.trainable == expected_modernbert(name, mcfg)
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert not any(n.endswith(("tok_embeddings.weight", "Wqkv.weight", "Wqkv.base_layer.weight")) for n in trainable)


def test_bitfit_on_a_bias_free_backbone_is_one_clear_error(random_exports):
    from pretrain.train.config import ConfigError

    with pytest.raises(ConfigError, match="method=bitfit: the backbone has no bias terms"):
        build(random_exports["modernbert"], "bitfit")
