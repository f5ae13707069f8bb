"""Contradictory or wrong fine-tuning configs are one-line errors naming the key (in-process),
and the CLI prints exactly one `pretrain-finetune: error:` line with exit code 2."""
from __future__ import annotations

import pytest

from ft_helpers import cli, compose_cfg
from pretrain.train.config import ConfigError

BASE = ["model.path=/nonexistent", "run.name=x", "task.train=a.tsv", "task.validation=b.tsv"]


def error_of(*overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        compose_cfg(*BASE, *overrides)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_presets_compose_and_method_presets_set_their_learning_rate():
    cfg = compose_cfg(*BASE, "method=lora", "method.r=4")
    assert cfg.method.name == "lora" and cfg.method.r == 4 and cfg.optim.lr == pytest.approx(5e-4)
    assert cfg.precision.dtype == "auto" and cfg.schedule.warmup_fraction == pytest.approx(0.06)
    cfg = compose_cfg(*BASE, "method=adapter", "optim.lr=3e-4")  # the command line wins over the preset
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.method.bottleneck == 64
    cfg = compose_cfg(*BASE, "task=glue-cola")
    assert cfg.task.header is False and cfg.task.text_column == 3 and cfg.task.metric == "matthews"
    cfg = compose_cfg(*BASE, "task=glue-mrpc")
    assert cfg.task.type == "pair_classification" and cfg.task.text_pair_column == "#2 String"


def test_pair_task_without_a_second_column():
    assert "task.text_pair_column" in error_of("task=pair_classification", "task.text_pair_column=null")


def test_key_of_another_method_is_refused():
    msg = error_of("method=adapter", "+method.r=4")
    assert "method.r" in msg and "method=adapter" in msg


def test_bad_values_name_the_key():
    assert "method.name" in error_of("method.name=dora")
    assert "task.metric" in error_of("task=regression", "task.metric=accuracy")
    assert "trainer.batch_size" in error_of("trainer.batch_size=15", "cluster.nproc=2")
    assert "task.format" in error_of("task=token_classification", "task.format=tsv")
    assert "method.init_score" in error_of("method=mask", "method.init_score=0.001")
    assert "optim.impl" in error_of("optim.impl=deepspeed")
    assert "precision.dtype" in error_of("precision.dtype=int8")
    assert "task.labels" in error_of("task.labels=[a]")


def test_cli_prints_one_line_for_a_config_error_and_for_a_hydra_error(tmp_path):
    result = cli("model=/nonexistent", "run.name=x", f"run.root={tmp_path}", "task.train=a", "task.validation=b",
                 "task=pair_classification", "task.text_pair_column=null")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pretrain-finetune: error:") and "text_pair_column" in lines[0]
    result = cli("model=/nonexistent", "run.name=x", "method=nonexistent")  # a preset that does not exist
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pretrain-finetune: error:") and "nonexistent" in lines[0]
