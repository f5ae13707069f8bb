"""Fine-tuning starts from a pretraining run directory (exported once into the fine-tuning run),
from a plain transformers BertForMaskedLM directory (its missing pooler joins the head) and from
an ALBERT export (shared layers, prefix attention)."""
from __future__ import annotations

import json
import os

import pytest

from ft_helpers import run_inprocess, task_overrides
from pretrain.finetune.model import BACKBONE_DIR, SOURCE_FILE

SHORT = ["trainer.max_steps=6", "trainer.eval_every=3"]


def test_from_a_pretraining_run_directory(tmp_path, pretrain_run, source_task):
    summary, run_dir = run_inprocess(*task_overrides(source_task, tmp_path, "from-run", pretrain_run), *SHORT, "method=lora")
    source = json.loads(open(os.path.join(run_dir, BACKBONE_DIR, SOURCE_FILE)).read())
    assert source["run"] == os.path.realpath(pretrain_run) and source["checkpoint"].endswith("step_000003")
    task = json.load(open(os.path.join(run_dir, "task", "task.json")))
    assert task["backbone"]["path"] == os.path.join(run_dir, BACKBONE_DIR) and task["backbone"]["arch"] == "bert"
    assert summary["final_step"] == 6 and summary["method"] == "lora"
    stamp = os.stat(os.path.join(run_dir, BACKBONE_DIR, "model.safetensors")).st_mtime_ns
    again, _ = run_inprocess(*task_overrides(source_task, tmp_path, "from-run", pretrain_run), "trainer.max_steps=9",
                             "trainer.eval_every=3", "method=lora")
    assert again["final_step"] == 9  # resumed, with the same exported backbone
    assert os.stat(os.path.join(run_dir, BACKBONE_DIR, "model.safetensors")).st_mtime_ns == stamp


def test_from_a_plain_transformers_masked_lm_directory(tmp_path, plain_hf_bert, source_task):
    summary, run_dir = run_inprocess(*task_overrides(source_task, tmp_path, "plain", plain_hf_bert), *SHORT, "method=bitfit")
    task = json.load(open(os.path.join(run_dir, "task", "task.json")))
    assert task["backbone"]["path"] == os.path.realpath(plain_hf_bert)
    from safetensors.torch import load_file

    stored = load_file(os.path.join(run_dir, "task", "task_weights.safetensors"))
    assert "bert.pooler.dense.weight" in stored and "classifier.weight" in stored  # the new pooler is head
    assert summary["trainable_params"] == sum(t.numel() for t in stored.values())


def test_albert_export_with_prefix_tuning(tmp_path, random_exports, source_task):
    summary, run_dir = run_inprocess(*task_overrides(source_task, tmp_path, "albert", random_exports["albert"]), *SHORT,
                                     "method=prefix", "method.num_virtual_tokens=4")
    assert summary["trainable_params"] == 1 * 2 * 4 * 64 + 64 * 2 + 2  # one shared layer's prefix + head
    from pretrain.finetune.reload import load_task_model

    assert load_task_model(os.path.join(run_dir, "task")).meta["backbone"]["arch"] == "albert"


@pytest.mark.parametrize("method", ["full", "lora"])
def test_an_electra_discriminator_export_fine_tunes(tmp_path, prepared_demo, source_task, method):
    """objective=electra's export (transformers' ElectraForPreTraining) is a pretrain-finetune
    backbone: full fine-tuning and LoRA (its ElectraLayer / query, value names)."""
    import torch

    from pretrain.data.config import ObjectiveConfig
    from pretrain.hf.electra import export_electra
    from pretrain.model import build_model
    from pretrain.model.config import ModelConfig
    from pretrain.objectives import build_objective

    torch.manual_seed(0)
    cfg = ModelConfig(arch="bert", vocab_size=2000, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                      max_position_embeddings=128, sentence_head="none")
    model = build_model(cfg)
    model.attach_objective(build_objective(ObjectiveConfig(name="electra", sentence_task="none",
                                                           generator_hidden_fraction=0.5), cfg))
    export = tmp_path / "electra"
    export_electra(model, os.path.join(prepared_demo, "tokenizer.json"), export)
    summary, run_dir = run_inprocess(*task_overrides(source_task, tmp_path, "electra", str(export)), *SHORT,
                                     f"method={method}")
    assert summary["final_step"] == 6 and summary["method"] == method
    task = json.load(open(os.path.join(run_dir, "task", "task.json")))
    assert task["backbone"]["arch"] == "electra"
