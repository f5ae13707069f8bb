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
    cfg = ModelConfig(arch=arch, vocab_size=2000, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                      max_position_embeddings=128, embedding_size=32 if arch == "albert" else None,
                      initializer_range=initializer_range)
    export_hf(build_model(cfg), cfg, os.path.join(prepared_demo, "tokenizer.json"), out)
    return out


@pytest.fixture(scope="session")
def random_exports(prepared_demo, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("random_exports")
    return {arch: export_random(prepared_demo, str(root / arch), arch) for arch in ("bert", "albert")}
