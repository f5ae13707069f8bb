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


def _rewrite_weights(directory, edit) -> None:
    """Edit the tensors stored in `directory`/model.safetensors in place (a hand-made checkpoint)."""
    from safetensors.torch import load_file, save_file

    path = str(directory / "model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_importing_an_unexpected_missing_or_untied_weight_is_one_error(arch, tokenizer_file, tmp_path):
    """transformers would load these directories into a different model without failing (drop the
    weight, initialise it randomly, or tie the decoder over the stored one): we refuse them."""
    from helpers_model import modern_cfg

    cfg = (tiny_cfg("bert", vocab_size=400) if arch == "bert" else modern_cfg(vocab_size=400, sentence_head="none"))
    good = export_hf(build_model(cfg), cfg, tokenizer_file, tmp_path / "good")
    load_hf_pretrained(good)  # the export itself imports cleanly
    embeddings = "bert.embeddings.word_embeddings.weight" if arch == "bert" else "model.embeddings.tok_embeddings.weight"
    decoder = "cls.predictions.decoder.weight" if arch == "bert" else "decoder.weight"
    needed = "cls.predictions.transform.dense.weight" if arch == "bert" else "head.dense.weight"

    cases = {
        "unexpected": (lambda t: t.__setitem__("extra.adapter.weight", torch.ones(3)), "has no place"),
        "missing": (lambda t: t.pop(needed), "initialise it randomly"),
        "untied": (lambda t: t.__setitem__(decoder, t[embeddings] + 0.5), "untied decoder"),
    }
    for name, (edit, needle) in cases.items():
        bad = tmp_path / name
        export_hf(build_model(cfg), cfg, tokenizer_file, bad)
        _rewrite_weights(bad, edit)
        with pytest.raises(ExportError, match=needle) as e:
            load_hf_pretrained(bad)
        assert "model.init_from=" in str(e.value) and "\n" not in str(e.value), name
    untied = tmp_path / "untied-config"
    export_hf(build_model(cfg), cfg, tokenizer_file, untied)
    config = json.loads((untied / "config.json").read_text())
    (untied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    _rewrite_weights(untied, lambda t: t.__setitem__(decoder, t[embeddings] * 2))
    with pytest.raises(ExportError, match="untied decoder"):
        load_hf_pretrained(untied)


def test_a_plain_transformers_masked_lm_still_imports(tokenizer_file, tmp_path):
    """A BertForMaskedLM directory lacks the pooler and NSP head: our import initialises them."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path / "mlm")
    model, cfg = load_hf_pretrained(tmp_path / "mlm")
    assert cfg.arch == "bert" and cfg.num_layers == 2
