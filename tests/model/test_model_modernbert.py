"""ModernBERT: the same model as transformers' ModernBertForMaskedLM (both directions), exported
as a directory that Auto classes and fill-mask load, and a registry that names it."""
import json

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, ModernBertForMaskedLM, pipeline

from helpers_model import example_ids, modern_cfg, packed_batch, run, run_packed, tiny_batch
from pretrain.hf.convert import from_hf_config, to_hf_config
from pretrain.hf.export import ExportError, export_hf, load_hf_pretrained, to_hf_model
from pretrain.model import build_model, registry
from pretrain.model.flops import forward_flops_per_sequence


def randomised(model):
    """HF and we zero-init some tensors; perturb so a mis-mapped tensor shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def hf_logits(hf, batch):
    return hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("unpad", [False, True])
def test_ours_equals_transformers_on_padded_and_packed_rows(unpad):
    cfg = modern_cfg(unpad=unpad, sentence_head="none", num_layers=4, global_attn_every_n_layers=2)
    torch.manual_seed(0)
    ours = randomised(build_model(cfg)).eval()
    hf = to_hf_model(ours, cfg)
    assert isinstance(hf, ModernBertForMaskedLM)
    batch = tiny_batch(cfg, seq=14)  # row 1 padded; windows of +-2 tokens bite at this length
    valid = batch["attention_mask"].bool()
    mine = run(ours, batch, all_positions=True).mlm_logits
    assert (mine - hf_logits(hf, batch))[valid].abs().max() <= 1e-5
    sparse = run(ours, batch)  # the sparse head, on the unpadded path when unpad=True
    assert (sparse.mlm_logits - hf_logits(hf, batch)[batch["labels"] != -100]).abs().max() <= 1e-5
    # Packed rows: every example equals transformers run on that example alone.
    exs = example_ids(cfg, [6, 9, 10, 5])
    packed = packed_batch(cfg, [exs[:2], exs[2:]], 16)
    out = run_packed(ours, packed)
    got = out.mlm_logits
    flat = (packed["labels"] != -100).reshape(-1).nonzero().squeeze(1)
    for r, row in enumerate([exs[:2], exs[2:]]):
        start = 0
        for ex in row:
            n = len(ex)
            theirs = hf(input_ids=ex[None], attention_mask=torch.ones(1, n, dtype=torch.long)).logits[0]
            labels = packed["labels"][r, start:start + n]
            mine_rows = (flat >= r * 16 + start) & (flat < r * 16 + start + n)
            assert (got[mine_rows] - theirs[labels != -100]).abs().max() <= 1e-5
            start += n


def test_transformers_to_ours_equal_logits_and_config_round_trip(tmp_path):
    cfg = modern_cfg(sentence_head="none", num_layers=4, global_attn_every_n_layers=2)
    torch.manual_seed(1)
    hf = randomised(ModernBertForMaskedLM(to_hf_config(cfg))).eval()
    hf.save_pretrained(str(tmp_path / "hf"))
    back = from_hf_config(hf.config)
    for field in ("arch", "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "hidden_act",
                  "local_attention", "global_attn_every_n_layers", "global_rope_theta", "local_rope_theta",
                  "linear_bias", "norm_bias", "layer_norm_eps"):
        assert getattr(back, field) == getattr(cfg, field), field
    ours, loaded_cfg = load_hf_pretrained(tmp_path / "hf")   # model.init_from's path
    ours.eval()
    assert loaded_cfg.arch == "modernbert"
    batch = tiny_batch(cfg, seq=14)
    valid = batch["attention_mask"].bool()
    assert (run(ours, batch, all_positions=True).mlm_logits - hf_logits(hf, batch))[valid].abs().max() <= 1e-5


def test_export_loads_with_auto_classes_and_fill_mask(tokenizer_file, tmp_path):
    cfg = modern_cfg(vocab_size=400)   # with a sentence head: an export leaves it out
    model = randomised(build_model(cfg)).eval()
    out_dir = export_hf(model, cfg, tokenizer_file, tmp_path / "export")
    config = json.loads((out_dir / "config.json").read_text())
    assert config["model_type"] == "modernbert" and config["architectures"] == ["ModernBertForMaskedLM"]
    assert (config["cls_token_id"], config["sep_token_id"], config["pad_token_id"]) == (2, 3, 0)
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    hf = AutoModelForMaskedLM.from_pretrained(str(out_dir)).eval()
    enc = tok(["The class statement defines a [MASK] object.", "Import the module"], padding=True,
              return_tensors="pt")
    theirs = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    ours = model(enc["input_ids"], None, enc["attention_mask"], all_positions=True).mlm_logits
    valid = enc["attention_mask"].bool()
    assert (ours - theirs)[valid].abs().max() <= 1e-5
    predictions = pipeline("fill-mask", model=str(out_dir), tokenizer=str(out_dir))("A function [MASK] value.")
    assert len(predictions) == 5 and all("token_str" in p for p in predictions)
    again, _ = load_hf_pretrained(out_dir)
    shared = {k: v for k, v in model.state_dict().items() if not k.startswith("heads.sentence")}
    for name, value in shared.items():
        assert torch.equal(again.state_dict()[name], value), name


def test_a_checkpoint_we_cannot_compute_is_one_export_error():
    cfg = modern_cfg(sentence_head="none", num_layers=4)
    hf_config = to_hf_config(cfg)
    hf_config.layer_types = ["full_attention", "full_attention", "sliding_attention", "full_attention"]
    with pytest.raises(ExportError, match="layer_types"):
        from_hf_config(hf_config)
    hf_config = to_hf_config(cfg)
    hf_config.mlp_bias = True
    with pytest.raises(ExportError, match="mlp_bias"):
        from_hf_config(hf_config)


def test_registry_names_every_architecture_and_refuses_others_in_one_line():
    assert set(registry.names()) == {"bert", "albert", "modernbert"}
    assert registry.for_hf_model_type("modernbert").name == "modernbert"
    with pytest.raises(ValueError, match=r"model.arch='gpt'.*modernbert") as e:
        registry.get("gpt")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="even number"):
        build_model(modern_cfg(local_attention=5))
    with pytest.raises(ValueError, match="bias-free is model.arch=modernbert"):
        build_model(modern_cfg(arch="bert"))


def test_flops_hand_count_with_local_windows():
    # L=10, H=32, I=48, 3 layers: global, local (+-2), local; no sentence head, 3 masked, V=97.
    cfg = modern_cfg(sentence_head="none")
    H, I, L, V = 32, 48, 10, 97
    local_pairs = 10 + 2 * (2 * 10 - 3)            # |i-j| <= 2 inside 10 tokens: 44
    linear = 2 * L * H * 3 * H + 2 * L * H * H + 2 * L * H * 2 * I + 2 * L * I * H
    layers = 3 * linear + 4 * H * (L * L + 2 * local_pairs)
    head = 2 * 3 * H * H + 2 * 3 * H * V
    assert forward_flops_per_sequence(cfg, L, 3) == layers + head


def test_init_follows_transformers_truncated_normals():
    cfg = modern_cfg(num_layers=8, hidden_size=64, intermediate_size=128, initializer_range=0.05)
    model = build_model(cfg)
    wqkv = model.encoder.layers[1].attn.Wqkv.weight
    wo = model.encoder.layers[1].mlp.Wo.weight
    assert wqkv.abs().max() <= 2 * 0.05 + 1e-7 and 0.035 < wqkv.std() < 0.05
    assert wo.abs().max() <= 2 * 0.05 / 4 + 1e-7          # std / sqrt(2 x 8 layers)
    assert model.encoder.layers[0].attn_norm.__class__.__name__ == "Identity"
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear)
               and m not in (model.heads.sentence.pooler, model.heads.sentence.classifier))


def test_export_writes_both_config_generations_and_a_4x_style_config_imports_as_the_same_model(tokenizer_file, tmp_path):
    """Non-default global-layer spacing and rotary thetas: an export's config.json says them in
    transformers 5's keys (layer_types, rope_parameters) and 4.x's (global_attn_every_n_layers,
    global_rope_theta, local_rope_theta); a checkpoint written by 4.x (only the old keys) imports
    as the same model, not with the defaults."""
    cfg = modern_cfg(vocab_size=400, num_layers=4, global_attn_every_n_layers=2, global_rope_theta=5000.0,
                     local_rope_theta=777.0, sentence_head="none")
    model = randomised(build_model(cfg)).eval()
    out_dir = export_hf(model, cfg, tokenizer_file, tmp_path / "export")
    config = json.loads((out_dir / "config.json").read_text())
    assert config["layer_types"] == ["full_attention", "sliding_attention"] * 2
    assert config["rope_parameters"]["full_attention"]["rope_theta"] == 5000.0 == config["global_rope_theta"]
    assert config["rope_parameters"]["sliding_attention"]["rope_theta"] == 777.0 == config["local_rope_theta"]
    assert config["global_attn_every_n_layers"] == 2

    old = {k: v for k, v in config.items() if k not in ("layer_types", "rope_parameters")}
    (out_dir / "config.json").write_text(json.dumps(old))
    again, again_cfg = load_hf_pretrained(out_dir)
    assert (again_cfg.global_attn_every_n_layers, again_cfg.global_rope_theta, again_cfg.local_rope_theta) == (2, 5000.0, 777.0)
    batch = tiny_batch(cfg, seq=14)
    valid = batch["attention_mask"].bool()
    diff = run(again.eval(), batch, all_positions=True).mlm_logits - run(model, batch, all_positions=True).mlm_logits
    assert diff[valid].abs().max() == 0


def test_runtime_settings_change_theta_and_window_without_new_weights():
    """A training phase's model settings: rotary thetas and the local window, layer by layer."""
    from dataclasses import replace

    from helpers_model import modern_cfg, run, tiny_batch
    from pretrain.model import apply_runtime_settings, build_model

    cfg = modern_cfg(local_attention=4)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = tiny_batch(cfg, seq=16, pad_from=None)
    before = run(model, batch).mlm_logits
    longer = replace(cfg, local_attention=8, global_rope_theta=1e6, local_rope_theta=5e4)
    assert apply_runtime_settings(model, longer) == cfg.num_layers
    attn = [layer.attn for layer in model.modules() if hasattr(layer, "attn")]
    assert [(a.window, a.theta) for a in attn] == [(None, 1e6), (8, 5e4), (8, 5e4)]
    after = run(model, batch).mlm_logits
    assert not torch.allclose(before, after)
    torch.manual_seed(0)
    fresh = build_model(longer).eval()   # the same as a model built with those settings
    assert torch.allclose(run(fresh, batch).mlm_logits, after, atol=1e-6)
