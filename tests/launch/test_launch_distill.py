"""objective=distill end to end: a 2-layer student from a 4-layer teacher (every other layer), 2
ranks, ZeRO-2, bf16, packed rows; kill -9 and resume give the uninterrupted losses; the student
exports like any run; a teacher with another tokenizer is refused before any rank starts."""
from __future__ import annotations

import json
import os

import pytest
import torch

from launch_helpers import kill_tree, latest, launch, losses, metrics, start, wait_for


def _teacher(root, tokenizer_file: str, vocab: int, layers: int = 4) -> str:
    """A bert-tiny-shaped teacher of `layers` layers, exported with `tokenizer_file`."""
    from pretrain.hf.export import export_hf
    from pretrain.model import ModelConfig, build_model

    cfg = ModelConfig(arch="bert", vocab_size=vocab, hidden_size=128, num_layers=layers, num_heads=2,
                      intermediate_size=512, sentence_head="none")
    torch.manual_seed(7)
    out = os.path.join(root, f"teacher-{layers}")
    export_hf(build_model(cfg), cfg, tokenizer_file, out)
    return out


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, prepared_demo) -> str:
    from pretrain.shardformat import load_manifest

    manifest = load_manifest(prepared_demo)
    return _teacher(str(tmp_path_factory.mktemp("teacher")), manifest.tokenizer_file, manifest.vocab_size)


DISTILL = ["objective=distill", "model.sentence_head=none", "model.vocab_size=0", "cluster.nproc=2", "parallel=zero2", "precision=bf16",
           "trainer.grad_accum=2", "trainer.checkpoint_every=4", "trainer.max_steps=8", "trainer.eval_every=8",
           "trainer.eval_batches=2"]


def test_distill_resumes_exactly_and_exports_the_student(tmp_path, tiny_data, teacher):
    root = str(tmp_path / "runs")
    ref = launch(root, tiny_data, "ref", *DISTILL, f"objective.teacher={teacher}", "trainer.export_on_finish=true")
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "student initialised from the teacher's layers [0, 2] (of 4)" in ref.stdout
    rows = [m for m in metrics(os.path.join(root, "ref")) if "train/loss" in m]
    for key in ("train/kl_loss", "train/cos_loss", "train/mlm_loss", "train/mlm_acc", "train/agreement"):
        assert key in rows[-1], key
    assert all(0 < m["train/kl_loss"] < 10 for m in rows)   # a random teacher: the student starts close to it
    evals = [m for m in metrics(os.path.join(root, "ref")) if "eval/agreement" in m]
    assert evals and "eval/teacher_mlm_acc" in evals[-1]
    with open(os.path.join(root, "ref", "export", "config.json")) as f:
        assert json.load(f)["num_hidden_layers"] == 2

    crash = os.path.join(root, "crash")
    proc = start(root, tiny_data, "crash", *DISTILL, f"objective.teacher={teacher}")
    wait_for(lambda: latest(crash) is not None, what="first checkpoint", proc=proc)
    kill_tree(proc)
    again = launch(root, tiny_data, "crash", *DISTILL, f"objective.teacher={teacher}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "student initialised" not in again.stdout   # a resume loads the checkpoint instead
    assert losses(crash) == losses(os.path.join(root, "ref"))


def test_a_teacher_with_another_tokenizer_or_zero3_is_refused(tmp_path, tiny_data, teacher):
    """Checked in the launcher's own process (config validation and preflight), before any rank."""
    from hydra import compose, initialize_config_module

    from launch.preflight import preflight
    from pretrain.data.synthetic import write_prepared
    from pretrain.train.config import ConfigError, validate

    other = write_prepared(str(tmp_path / "other"), {"train": 1, "valid": 1}, docs_per_shard=4, vocab_size=1500)
    foreign = _teacher(str(tmp_path), os.path.join(other, "tokenizer.json"), 1500)
    for overrides, needle in (([f"objective.teacher={foreign}"], "differs from the tokenizer of the training data"),
                              ([f"objective.teacher={teacher}", "parallel=zero3"], "parallel.zero_stage <= 2")):
        with initialize_config_module(config_module="conf", version_base="1.3"):
            cfg = compose(config_name="train", overrides=["run.name=b", f"run.root={tmp_path}", f"data.path={tiny_data}",
                                                          *DISTILL, *overrides])
        cfg = dict(cfg)
        cfg.pop("hydra", None)
        with pytest.raises(ConfigError, match=needle) as e:
            preflight(validate(cfg))
        assert "\n" not in str(e.value)
