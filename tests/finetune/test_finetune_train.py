"""Every method, trained on a real-text task: better than chance, frozen parameters bit-identical,
the stored task weights reload into a fresh model that reproduces the validation predictions
exactly, test predictions written, and the summary's counts and bytes true."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from ft_helpers import compose_cfg, task_overrides
from launch.rundir import prepare_run_dir
from pretrain.finetune.checkpoint import TASK_DIR, TASK_WEIGHTS
from pretrain.finetune.evaluate import predict
from pretrain.finetune.reload import load_task_model
from pretrain.finetune.train import Run, fit

CHANCE = 0.5  # balanced binary task
# 240 steps: at 120, side and mask tuning ended between 0.46 and 0.65 on some backbone/task seeds
# (the bar is 0.65); at 240 every method cleared 0.68 on 8 seeds (side at lr 3e-3: 1e-2 overshoots).
LEARNING = ["trainer.max_steps=240", "trainer.eval_every=40", "model.hidden_dropout=0", "model.attention_dropout=0"]
LR = {"full": "1e-3", "side": "3e-3"}


@pytest.mark.parametrize("method", ["full", "adapter", "prefix", "lora", "bitfit", "side", "mask"])
def test_method_learns_keeps_frozen_weights_and_its_task_weights_reload_exactly(tmp_path, test_backbone, source_task, method):
    cfg = compose_cfg(*task_overrides(source_task, tmp_path, method, test_backbone), *LEARNING, f"method={method}",
                      f"optim.lr={LR.get(method, '1e-2')}")
    run = Run(cfg, prepare_run_dir(cfg), log=lambda *a, **k: None)
    frozen = {n: p.detach().clone() for n, p in run.unwrapped.named_parameters() if not p.requires_grad}
    trainable = sum(p.numel() for p in run.unwrapped.parameters() if p.requires_grad)
    assert (len(frozen) == 0) == (method == "full")
    summary = fit(run)

    assert summary["best/eval_accuracy"] >= CHANCE + 0.15, summary["line"]
    for name, p in run.unwrapped.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"{method} changed frozen {name}"
    assert summary["trainable_params"] == trainable
    assert summary["trainable_fraction"] == pytest.approx(trainable / summary["base_params"])
    task_dir = os.path.join(run.run_dir, TASK_DIR)
    assert summary["task_bytes"] == os.path.getsize(os.path.join(task_dir, TASK_WEIGHTS))
    assert summary["reloaded/eval_accuracy"] == pytest.approx(summary["best/eval_accuracy"])

    loaded = load_task_model(task_dir)  # a fresh backbone + method + stored task weights
    before = predict(run.model, run.val_dl, run.acc, "classification", False)
    after = predict(loaded.model, run.val_dl, run.acc, "classification", False)
    assert np.array_equal(before.logits, after.logits)
    assert loaded.meta["trainable_params"] == trainable

    with open(os.path.join(run.run_dir, "test_predictions.jsonl")) as f:
        preds = [json.loads(line) for line in f]
    assert len(preds) == 40 and {p["prediction"] for p in preds} <= {"reference", "license"}
    assert [p["line"] for p in preds] == list(range(2, 42))  # the test file's data lines, in order
    if method == "mask":  # 1 bit per masked weight + the head in fp32
        assert summary["task_bytes"] < summary["trainable_params"] * 4 / 8


@pytest.mark.parametrize("method", ["full", "adapter", "prefix", "lora", "side", "mask"])
def test_a_modernbert_backbone_learns_with_every_method_and_reloads_exactly(tmp_path, modern_test_backbone,
                                                                            source_task, method):
    """ModernBERT through the same registry: bias-free (so no bitfit), no token types, local windows."""
    cfg = compose_cfg(*task_overrides(source_task, tmp_path, method, modern_test_backbone), *LEARNING,
                      f"method={method}", f"optim.lr={LR.get(method, '1e-2')}")
    run = Run(cfg, prepare_run_dir(cfg), log=lambda *a, **k: None)
    summary = fit(run)
    assert summary["best/eval_accuracy"] >= CHANCE + 0.15, summary["line"]
    assert summary["reloaded/eval_accuracy"] == pytest.approx(summary["best/eval_accuracy"])
    loaded = load_task_model(os.path.join(run.run_dir, TASK_DIR))
    before = predict(run.model, run.val_dl, run.acc, "classification", False)
    after = predict(loaded.model, run.val_dl, run.acc, "classification", False)
    assert np.array_equal(before.logits, after.logits)
