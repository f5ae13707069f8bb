"""Fixtures of the fine-tuning tests: tokenizer, backbones, a task built from offline text.

The backbones are tiny (hidden 64, 2 layers). `pretrained_run` is a real pretrain-launch run on
the suite's prepared demo shards; its export is "our export" and the run directory itself is a
valid `model=`. A plain transformers BertForMaskedLM directory covers backbones from elsewhere.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

TINY = ["model=bert-tiny", "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2",
        "model.intermediate_size=128", "model.max_position_embeddings=128"]


@pytest.fixture(scope="session")
def tokenizer_dir(prepared_demo, tmp_path_factory) -> str:
    """The demo tokenizer (vocab 2000) as a transformers tokenizer directory."""
    from pretrain.hf.export import save_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(os.path.join(prepared_demo, "tokenizer.json"), out)
    return str(out)


def export_random(prepared_demo: str, out: str, arch: str, initializer_range: float = 0.02) -> str:
    """A randomly initialised tiny model written by our exporter (pretrain.hf.export.export_hf)."""
    import torch

    from pretrain.hf.export import export_hf
    from pretrain.model import build_model
    from pretrain.model.config import ModelConfig

    torch.manual_seed(0)
    # ModernBERT: bias-free, layer 0 global, layer 1 local with an 8-token window (shorter than
    # the tests' rows, so windows matter).
    modern = dict(linear_bias=False, norm_bias=False, local_attention=8, global_attn_every_n_layers=2,
                  sentence_head="none") if arch == "modernbert" else {}
    cfg = ModelConfig(arch=arch, vocab_size=2000, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                      max_position_embeddings=128, embedding_size=32 if arch == "albert" else None,
                      initializer_range=initializer_range, **modern)
    export_hf(build_model(cfg), cfg, os.path.join(prepared_demo, "tokenizer.json"), out)
    return out


@pytest.fixture(scope="session")
def random_exports(prepared_demo, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("random_exports")
    return {arch: export_random(prepared_demo, str(root / arch), arch) for arch in ("bert", "albert", "modernbert")}


@pytest.fixture(scope="session")
def test_backbone(prepared_demo, tmp_path_factory) -> str:
    """Our export of a random tiny BERT with initializer_range 0.1 instead of 0.02: at 0.02 a random
    encoder's [CLS] vector hardly depends on the input (std across inputs ~0.5% of its size), so no
    frozen-backbone method can learn in a test's hundred steps; at 0.1 the input reaches [CLS].
    (A real pretraining run long enough to do this costs minutes; bench/finetune.py does that.)"""
    return export_random(prepared_demo, str(tmp_path_factory.mktemp("test_backbone") / "bert"), "bert", 0.1)


@pytest.fixture(scope="session")
def modern_test_backbone(prepared_demo, tmp_path_factory) -> str:
    """The same for ModernBERT (initializer_range 0.1, for the same reason)."""
    return export_random(prepared_demo, str(tmp_path_factory.mktemp("test_backbone") / "modernbert"), "modernbert", 0.1)


@pytest.fixture(scope="session")
def source_task(tmp_path_factory) -> dict[str, str]:
    """Binary, balanced: is a sentence from the Python language reference or from a licence text?"""
    from pretrain.finetune.demo_task import write_task

    return write_task(tmp_path_factory.mktemp("source_task"), "source", "tsv", 320, 160, 40, seed=0,
                      sources=("reference", "license"))


@pytest.fixture(scope="session")
def pretrain_run(prepared_demo, tmp_path_factory) -> str:
    """A real pretrain-launch run directory (tiny model, a few steps, one checkpoint)."""
    root = tmp_path_factory.mktemp("pretrain_runs")
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"))
    env.pop("WANDB_MODE", None)
    result = subprocess.run(
        [sys.executable, "-m", "launch.train", f"run.root={root}", "run.name=tiny", f"data.path={prepared_demo}", *TINY,
         "data.max_seq_len=64", "data.micro_batch_size=8", "data.num_workers=0", "trainer.max_steps=3",
         "trainer.checkpoint_every=3", "trainer.eval_every=0", "trainer.export_on_finish=false", "trainer.progress=false",
         "tracker=none"], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return str(root / "tiny")


@pytest.fixture(scope="session")
def plain_hf_bert(prepared_demo, tmp_path_factory) -> str:
    """A transformers BertForMaskedLM directory (save_pretrained) with a tokenizer: no pooler, not ours."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    out = tmp_path_factory.mktemp("plain_hf_bert")
    tok = BertTokenizerFast(tokenizer_file=os.path.join(prepared_demo, "tokenizer.json"))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128, initializer_range=0.1)
    import torch

    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
