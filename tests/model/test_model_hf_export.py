"""Export to an HF directory that Auto classes and fill-mask load with no custom code; re-import."""
import json

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

from helpers_model import tiny_cfg
from pretrain.hf.export import ExportError, export_hf, load_hf_pretrained
from pretrain.model import build_model

@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_export_loads_with_auto_classes_and_round_trips(arch, tokenizer_file, tmp_path):
    cfg = tiny_cfg(arch, vocab_size=400, hidden_dropout=0.0, attention_dropout=0.0)
    model = build_model(cfg).eval()
    out_dir = export_hf(model, cfg, tokenizer_file, tmp_path / "export")
    assert (out_dir / "model.safetensors").is_file()
    config = json.loads((out_dir / "config.json").read_text())
    assert config["model_type"] == arch
    assert config["architectures"] == ["BertForPreTraining" if arch == "bert" else "AlbertForPreTraining"]

    tok = AutoTokenizer.from_pretrained(str(out_dir))
    hf = AutoModelForMaskedLM.from_pretrained(str(out_dir)).eval()
    enc = tok(["The class statement defines a [MASK] object.", "Import the module"], padding=True,
              return_tensors="pt")
    assert enc["input_ids"][0, 0] == 2 and tok.mask_token_id == 4  # [CLS] added, our ids
    theirs = hf(**enc).logits
    ours = model(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], all_positions=True).mlm_logits
    assert (ours - theirs).abs().max() <= 1e-5

    predictions = pipeline("fill-mask", model=str(out_dir), tokenizer=str(out_dir))("A function [MASK] value.")
    assert len(predictions) == 5 and all("token_str" in p for p in predictions)

    again, again_cfg = load_hf_pretrained(out_dir)
    assert again_cfg.arch == arch and again_cfg.vocab_size == 400
    for (name, p), (_, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(p, q), name


def test_user_errors_are_one_line_export_errors(tokenizer_file, tmp_path):
    with pytest.raises(ExportError, match="init_from"):
        load_hf_pretrained(tmp_path / "nope")
    cfg = tiny_cfg(vocab_size=100)  # smaller than the 400-token tokenizer
    with pytest.raises(ExportError, match="vocab_size"):
        export_hf(build_model(cfg), cfg, tokenizer_file, tmp_path / "out")


@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_a_model_without_sentence_head_exports_and_fills_masks(arch, tokenizer_file, tmp_path):
    """objective=mlm runs (model.sentence_head=none) have no pooler: export must not demand one."""
    cfg = tiny_cfg(arch, vocab_size=400, hidden_dropout=0.0, attention_dropout=0.0, sentence_head="none")
    model = build_model(cfg).eval()
    out_dir = export_hf(model, cfg, tokenizer_file, tmp_path / "headless")
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    hf = AutoModelForMaskedLM.from_pretrained(str(out_dir)).eval()
    enc = tok(["The class statement defines a [MASK] object."], return_tensors="pt")
    ours = model(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], all_positions=True).mlm_logits
    assert (ours - hf(**enc).logits).abs().max() <= 1e-5
    again, again_cfg = load_hf_pretrained(out_dir)
    assert again_cfg.arch == arch
