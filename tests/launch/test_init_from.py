"""Continued pretraining (model.init_from): the effective model is decided at launch and written
to config.yaml (the directory's shape, the run's options); contradictions are one line."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from hydra import compose, initialize_config_module

from launch.preflight import preflight
from launch_helpers import run_env
from pretrain.hf.export import ExportError, export_hf, load_hf_pretrained
from pretrain.model import ModelConfig, build_model
from pretrain.shardformat import load_manifest
from pretrain.train.config import ConfigError, validate

# the bert-tiny preset's shape: not the default preset (bert-mini)
TINY = dict(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512, max_position_embeddings=512)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, prepared_demo) -> str:
    manifest = load_manifest(prepared_demo)
    cfg = ModelConfig(vocab_size=manifest.vocab_size, **TINY)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_export")
    export_hf(build_model(cfg), cfg, manifest.tokenizer_file, str(out))
    return str(out)


def _settled(tmp_path, data, *overrides):
    overrides = ["run.name=i", f"run.root={tmp_path}", f"data.path={data}", "precision=fp32", *overrides]
    with initialize_config_module(config_module="conf", version_base="1.3"):
        raw = dict(compose(config_name="train", overrides=overrides))
    raw.pop("hydra", None)
    cfg = validate(raw)
    preflight(cfg, overrides)
    return cfg


def test_shape_comes_from_the_directory_and_options_from_the_run(tmp_path, tiny_data, tiny_export):
    cfg = _settled(tmp_path, tiny_data, f"model.init_from={tiny_export}", "model.gradient_checkpointing=true",
                   "model.hidden_dropout=0.0", "model.sentence_head=none", "objective=mlm")
    m = cfg.model
    assert (m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size) == (128, 2, 2, 512)
    assert m.vocab_size == load_manifest(tiny_data).vocab_size and m.init_from == tiny_export
    assert m.gradient_checkpointing is True and m.hidden_dropout == 0.0 and m.sentence_head == "none"
    assert m.attention_dropout == 0.1  # the run's (the preset's) value, not silently the directory's

    from pretrain.train.build import build_model_from_config

    model, mcfg = build_model_from_config(cfg)
    assert mcfg.gradient_checkpointing and mcfg.hidden_dropout == 0.0 and model.cfg == mcfg
    exported, _ = load_hf_pretrained(tiny_export)
    ours = model.state_dict()
    for name, tensor in exported.state_dict().items():
        if not name.startswith("heads.sentence"):
            assert torch.equal(ours[name], tensor), name
    assert not any(name.startswith("heads.sentence") for name in ours)


def test_a_matching_preset_is_fine(tmp_path, tiny_data, tiny_export):
    cfg = _settled(tmp_path, tiny_data, "model=bert-tiny", f"model.init_from={tiny_export}")
    assert cfg.model.hidden_size == 128


@pytest.mark.parametrize("override, needle", [
    ("model=bert-base", "model=bert-base contradicts model.init_from"),
    ("model.hidden_size=64", "model.hidden_size contradicts"),
    ("model.vocab_size=99999", "model.vocab_size contradicts"),
    ("model.arch=albert", "model.arch contradicts"),
])
def test_an_explicit_contradiction_is_one_line(tmp_path, tiny_data, tiny_export, override, needle):
    with pytest.raises(ConfigError) as err:
        _settled(tmp_path, tiny_data, override, f"model.init_from={tiny_export}")
    message = str(err.value)
    assert needle in message and "\n" not in message and "shape comes from that directory" in message


def test_loading_with_a_config_of_another_shape_is_refused(tiny_export):
    with pytest.raises(ExportError, match="model.hidden_size=256 but model.init_from"):
        load_hf_pretrained(tiny_export, ModelConfig(vocab_size=2000, hidden_size=256))


def test_continued_pretraining_from_another_preset_trains_and_exports(tmp_path, tiny_data, tiny_export):
    """The default preset is bert-mini; the directory is bert-tiny: launch, train, export, fill a mask."""
    cmd = [sys.executable, "-m", "launch.train", "run.name=cont", f"run.root={tmp_path}/runs",
           f"data.path={tiny_data}", f"model.init_from={tiny_export}", "model.gradient_checkpointing=true",
           "model.hidden_dropout=0.0", "cluster.nproc=1", "trainer.max_steps=3", "trainer.eval_every=0",
           "trainer.log_every=1", "trainer.progress=false", "tracker=none", "data.micro_batch_size=8",
           "data.max_seq_len=64", "optim.lr=1e-3"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=run_env())
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "cont"
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (stored["model"]["hidden_size"], stored["model"]["num_layers"]) == (128, 2)
    assert stored["model"]["gradient_checkpointing"] is True and stored["model"]["hidden_dropout"] == 0.0
    assert stored["precision"]["resolved_from"] == "auto" and stored["precision"]["dtype"] in ("bf16", "fp32")
    assert any(line.startswith("precision: ") for line in result.stdout.splitlines())
    exported = json.loads((run_dir / "export" / "config.json").read_text())
    assert (exported["hidden_size"], exported["num_hidden_layers"]) == (128, 2)
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(run_dir / "export"), device="cpu")
    assert len(fill("The [MASK] statement is used in a loop.")) == 5
    assert os.path.isdir(run_dir / "checkpoints")
