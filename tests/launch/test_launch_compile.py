"""trainer.compile: the compiled model trains the same run as the eager one (ZeRO-3 at 2 ranks,
packed rows, gradient checkpointing), and the pipeline engine refuses it in one line."""
from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

from launch_helpers import launch, losses
from pretrain.train.config import ConfigError, validate

RUN = ["model=modernbert-tiny", "recipe=modern", "cluster.nproc=2", "parallel=zero3", "precision=fp32",
       "data.packing=true", "model.gradient_checkpointing=true", "trainer.max_steps=4",
       "trainer.checkpoint_every=1000"]


def test_compiled_run_matches_the_eager_run_under_zero3_with_checkpointing(tmp_path, tiny_data):
    root = str(tmp_path / "runs")
    eager = launch(root, tiny_data, "eager", *RUN)
    assert eager.returncode == 0, eager.stderr[-3000:]
    compiled = launch(root, tiny_data, "compiled", *RUN, "trainer.compile=true", timeout=600)
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert "torch.compile" in compiled.stdout
    a, b = losses(os.path.join(root, "eager")), losses(os.path.join(root, "compiled"))
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    # Same weights, same batches: the compiled kernels reorder float sums only.
    assert [b[s] for s in sorted(b)] == pytest.approx([a[s] for s in sorted(a)], rel=1e-4)
    assert a[4] < a[1]


def test_compile_with_pipeline_stages_is_one_line_error():
    raw = OmegaConf.create({"run": {"name": "x"}, "data": {"path": "d"}, "cluster": {"nproc": 2},
                            "parallel": {"pipeline_stages": 2, "zero_stage": 0}, "trainer": {"compile": True}})
    with pytest.raises(ConfigError, match="trainer.compile=true is not supported with parallel.pipeline_stages=2") as e:
        validate(raw)
    assert "\n" not in str(e.value)
