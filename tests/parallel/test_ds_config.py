"""DeepSpeed config plumbing from the typed configs and the conf/ presets (no processes)."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from parallel import ds_config
from parallel.config import OptimConfig, ParallelConfig, PrecisionConfig, ScheduleConfig
from parallel.ds_config import build_ds_config

CONF = Path(__file__).resolve().parents[2] / "conf"
SCHEMAS = {"parallel": ParallelConfig, "precision": PrecisionConfig, "optim": OptimConfig,
           "schedule": ScheduleConfig}


def preset(group, name):
    return SCHEMAS[group](**yaml.safe_load((CONF / group / f"{name}.yaml").read_text()))


def build(parallel=None, precision=None, optim=None, mbs=4, gas=2, world=2, **kw):
    return build_ds_config(parallel or ParallelConfig(), precision or PrecisionConfig(),
                           optim or OptimConfig(), ScheduleConfig(), mbs, gas, world, **kw)


@pytest.mark.parametrize("group", sorted(SCHEMAS))
def test_every_preset_matches_the_schema_exactly(group):
    fields = {f.name for f in dataclasses.fields(SCHEMAS[group])}
    files = sorted((CONF / group).glob("*.yaml"))
    assert files
    for f in files:
        assert set(yaml.safe_load(f.read_text())) == fields, f.name


def test_expected_presets_exist():
    names = {g: {p.stem for p in (CONF / g).glob("*.yaml")} for g in SCHEMAS}
    assert {"single", "ddp", "zero1", "zero2", "zero3", "zero3_offload", "pipeline"} <= names["parallel"]
    assert names["precision"] == {"auto", "fp32", "bf16", "fp16"}
    assert names["optim"] == {"adamw", "lamb"}
    assert names["schedule"] == {"linear", "cosine", "constant", "wsd"}


def test_batch_sizes_clipping_and_quiet_logging():
    c = build(optim=OptimConfig(grad_clip=0.5), mbs=8, gas=4, world=2)
    assert c["train_micro_batch_size_per_gpu"] == 8 and c["gradient_accumulation_steps"] == 4
    assert c["train_batch_size"] == 64 and c["gradient_clipping"] == 0.5
    assert c["steps_per_print"] >= 2**30 and c["wall_clock_breakdown"] is False
    assert "optimizer" not in c and "scheduler" not in c and "checkpoint" not in c
    assert build(load_universal=True)["checkpoint"] == {"load_universal": True}


@pytest.mark.parametrize("name,stage", [("single", 0), ("ddp", 0), ("zero1", 1), ("zero2", 2), ("zero3", 3)])
def test_zero_presets(name, stage):
    c = build(preset("parallel", name))
    assert c["zero_optimization"]["stage"] == stage
    assert "offload_optimizer" not in c["zero_optimization"]


def test_offload_preset_and_client_optimizer_flag():
    c = build(preset("parallel", "zero3_offload"))
    z = c["zero_optimization"]
    assert z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert c["zero_force_ds_cpu_optimizer"] is False
    c = build(preset("parallel", "zero3_offload"), optim=OptimConfig(impl="deepspeed"))
    assert "zero_force_ds_cpu_optimizer" not in c
    assert c["optimizer"]["type"] == "AdamW" and c["optimizer"]["params"]["weight_decay"] == 0.01


def test_precision_keys():
    assert build(precision=preset("precision", "bf16"))["bf16"] == {"enabled": True}
    c = build(preset("parallel", "zero2"), precision=preset("precision", "fp16"))
    assert c["fp16"] == {"enabled": True, "loss_scale": 0.0, "initial_scale_power": 16,
                         "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1.0}
    assert c["bf16"] == {"enabled": False}
    assert build()["fp16"] == {"enabled": False}


@pytest.mark.parametrize("kwargs,match", [
    (dict(parallel=ParallelConfig(zero_stage=4)), "zero_stage=4"),
    (dict(parallel=ParallelConfig(offload_optimizer=True)), "offload_optimizer"),
    (dict(parallel=ParallelConfig(zero_stage=2, offload_params=True)), "offload_params"),
    (dict(parallel=ParallelConfig(zero_stage=2, pipeline_stages=2)), "ZeRO 0-1 only"),
    (dict(parallel=ParallelConfig(pipeline_stages=2), world=3), "not divisible"),
    (dict(parallel=ParallelConfig(zero_stage=1, pipeline_stages=2, offload_optimizer=True)), "issue #3866"),
    (dict(parallel=ParallelConfig(pipeline_stages=2), precision=PrecisionConfig(dtype="bf16")),
     "bf16 needs parallel.zero_stage=1"),
    (dict(parallel=ParallelConfig(pipeline_stages=2, pipeline_partition="even")), "pipeline_partition='even'"),
    (dict(precision=PrecisionConfig(dtype="fp8")), "precision.dtype"),
    (dict(optim=OptimConfig(impl="apex")), "optim.impl"),
    (dict(mbs=0), "micro_batch_size"),
    (dict(precision=PrecisionConfig(dtype="fp16")), "fp16 needs parallel.zero_stage >= 1"),
])
def test_user_errors_are_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        build(**kwargs)
    assert "\n" not in str(e.value)


def test_pipeline_preset_builds_a_zero1_config_over_the_data_parallel_size():
    c = build(preset("parallel", "pipeline"), world=4)
    assert c["zero_optimization"]["stage"] == 1 and c["train_batch_size"] == 4 * 2 * 2
    for method in ("parameters", "uniform", "type:EncoderLayer"):
        build(ParallelConfig(zero_stage=1, pipeline_stages=2, pipeline_partition=method), world=4)


def test_fp16_refused_where_the_accelerator_lacks_it(monkeypatch):
    from deepspeed.accelerator import get_accelerator
    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: False)
    with pytest.raises(ValueError, match="precision.dtype=fp16 is not supported") as e:
        ds_config.check_device_dtype("fp16")
    assert "\n" not in str(e.value)
    ds_config.check_device_dtype("fp32")


@pytest.mark.parametrize("zero, dtype, fp32_accum", [
    (2, "bf16", True), (3, "bf16", True), (2, "fp16", True), (3, "fp16", True),
    (0, "bf16", False), (1, "bf16", False), (1, "fp16", False), (2, "fp32", False)])
def test_bf16_and_fp16_accumulate_gradients_in_fp32_where_deepspeed_does_it_right(zero, dtype, fp32_accum):
    cfg = build(ParallelConfig(zero_stage=zero), PrecisionConfig(dtype=dtype))
    assert ("data_types" in cfg) == fp32_accum
    if fp32_accum:
        assert cfg["data_types"] == {"grad_accum_dtype": "fp32"}
    assert ds_config.accumulates_in_fp32(ParallelConfig(zero_stage=zero), PrecisionConfig(dtype=dtype)) == (
        fp32_accum or dtype == "fp32")


def test_cuda_defaults_on_a_cuda_device_and_cpu_defaults_elsewhere():
    bert_base = 110_000_000
    cuda = build(ParallelConfig(zero_stage=2), device_type="cuda", model_numel=bert_base)["zero_optimization"]
    assert cuda["overlap_comm"] is True
    assert cuda["reduce_bucket_size"] == cuda["allgather_bucket_size"] == bert_base // 8
    tiny = build(ParallelConfig(zero_stage=2), device_type="cuda", model_numel=1_000)["zero_optimization"]
    assert tiny["reduce_bucket_size"] == 5_000_000                 # floor
    huge = build(ParallelConfig(zero_stage=3), device_type="cuda", model_numel=10**11)["zero_optimization"]
    assert huge["reduce_bucket_size"] == 500_000_000               # ceiling
    cpu = build(ParallelConfig(zero_stage=2), device_type="cpu", model_numel=bert_base)["zero_optimization"]
    assert cpu["overlap_comm"] is False and cpu["reduce_bucket_size"] == ds_config.CPU_BUCKET
    pipe = build(ParallelConfig(zero_stage=1, pipeline_stages=2), device_type="cuda", model_numel=bert_base)
    assert pipe["zero_optimization"]["overlap_comm"] is False   # DeepSpeed would turn it off for pipelines
    # What a user sets wins.
    own = build(ParallelConfig(zero_stage=2, overlap_comm=False, reduce_bucket_size=123, allgather_bucket_size=456),
                device_type="cuda", model_numel=bert_base)["zero_optimization"]
    assert (own["overlap_comm"], own["reduce_bucket_size"], own["allgather_bucket_size"]) == (False, 123, 456)


def test_adamw_kernel_follows_where_the_optimizer_steps():
    import torch
    from torch import nn

    from parallel.optim import build_optimizer

    model = nn.Linear(3, 3)
    assert build_optimizer(model, OptimConfig(), device_type="cuda").defaults["fused"] is True
    cpu = build_optimizer(model, OptimConfig(), device_type="cpu")
    assert cpu.defaults["foreach"] is True and not cpu.defaults.get("fused")
    assert isinstance(cpu, torch.optim.AdamW)
