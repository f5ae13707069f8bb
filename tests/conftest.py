"""Session fixtures shared across test packages.

`prepared_demo`: a directory prepared by the real `pretrain-prepare` pipeline from ~1 MB of the
offline demo corpus (CPython docs/docstrings), vocab 2000, 4 train shards + 1 valid shard.
Other packages' tests (data, train, export) read it instead of synthesising shards.
"""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> str:
    """Directory with the demo corpus files (.txt, .jsonl, .jsonl.gz), ~1 MB of text."""
    from pretrain.prepare.demo_corpus import write_demo_corpus

    out = tmp_path_factory.mktemp("demo_corpus")
    write_demo_corpus(str(out), max_bytes=1_000_000)
    return str(out)


@pytest.fixture(scope="session")
def prepared_demo(tmp_path_factory, demo_corpus) -> str:
    """Path of a prepared directory (manifest.json, tokenizer.json, train/ and valid/ shards)."""
    from pretrain.prepare.config import validate_config
    from pretrain.prepare.pipeline import run

    out = tmp_path_factory.mktemp("prepared_demo")
    cfg = validate_config({
        "input": [f"{demo_corpus}/*"],
        "output": str(out),
        "validation_fraction": 0.05,
        "num_workers": 2,
        "progress": False,
        "tokenizer": {"vocab_size": 2000},
    })
    run(cfg, echo=lambda line: None)
    return str(out)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a CUDA GPU: skipped, with the reason, where there is none
    (bench/gpu_check.sh runs them on a GPU machine with `-m cuda`)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False); run bench/gpu_check.sh on one")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
