"""Helpers for prepare tests: run the real pipeline in-process on tiny files with a reused tokenizer."""
from __future__ import annotations

import os

import pytest


@pytest.fixture
def prepare(prepared_demo, tmp_path):
    """prepare(inputs, **overrides) -> (manifest dict, output dir); reuses the demo tokenizer (no training)."""
    import json

    from pretrain.prepare.config import validate_config
    from pretrain.prepare.pipeline import run

    def _run(inputs, output=None, **overrides):
        raw = {
            "input": [str(p) for p in inputs],
            "output": str(output or tmp_path / "out"),
            "num_workers": 0,
            "progress": False,
            "validation_fraction": 0.0,
            "tokenizer": {"path": os.path.join(prepared_demo, "tokenizer.json")},
        }
        for key, value in overrides.items():
            if "__" in key:
                group, sub = key.split("__")
                raw.setdefault(group, {})[sub] = value
            else:
                raw[key] = value
        out = raw["output"]
        run(validate_config(raw), echo=lambda line: None)
        with open(os.path.join(out, "manifest.json")) as f:
            return json.load(f), out

    return _run
