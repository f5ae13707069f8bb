"""precision at launch: auto resolved once into config.yaml with its reason, kept on resume,
left to the compute node for SLURM; explicit emulated bf16 warns in one line."""
import os
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_module

from launch.precision import resolve_run_precision, settle_launch_precision
from launch.rundir import prepare_run_dir
from pretrain.train.rundir import load_run_config
from launch_helpers import run_env
from parallel import precision
from pretrain.train.config import ConfigError, validate

AMX = {"avx2": True, "avx512": True, "avx512_bf16": True, "amx": True}


def _cfg(tmp_path, *overrides):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        raw = compose(config_name="train", overrides=["run.name=p", f"run.root={tmp_path}", "data.path=/x", *overrides])
    raw = dict(raw)
    raw.pop("hydra", None)
    return validate(raw)


@pytest.fixture
def cpu_ratio(monkeypatch):
    """This 'CPU' has AVX512-BF16/AMX flags and a bf16/fp32 matmul ratio we choose; counts probes."""
    state = {"ratio": 2.0, "probes": 0}

    def probe(device_type="cpu"):
        state["probes"] += 1
        return state["ratio"]

    monkeypatch.setattr(precision, "cpu_features", lambda: dict(AMX))
    monkeypatch.setattr(precision, "bf16_speed_ratio", probe)
    monkeypatch.setattr(precision, "default_device", lambda: __import__("torch").device("cpu"))
    return state


def test_auto_is_the_default_and_is_written_resolved_with_its_reason(tmp_path, cpu_ratio):
    cfg = _cfg(tmp_path)
    assert cfg.precision.dtype == "auto"
    lines = settle_launch_precision(cfg)
    assert len(lines) == 1 and lines[0].startswith("precision: bf16 (auto -> bf16: cpu:")
    run_dir = prepare_run_dir(cfg)
    stored = yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))["precision"]
    assert stored["dtype"] == "bf16" and stored["resolved_from"] == "auto"
    assert "2x fp32 speed (measured)" in stored["reason"]
    assert load_run_config(run_dir).precision.dtype == "bf16"  # what the ranks read


def test_a_relaunch_keeps_the_recorded_dtype_and_fresh_re_resolves(tmp_path, cpu_ratio):
    first = _cfg(tmp_path)
    settle_launch_precision(first)
    prepare_run_dir(first)
    cpu_ratio["ratio"] = 0.01  # the same machine, now measured as emulating: must not flip the run
    again = _cfg(tmp_path)
    lines = settle_launch_precision(again)
    assert again.precision.dtype == "bf16" and again.precision.resolved_from == "auto"
    assert "a resumed run never re-resolves" in lines[0]
    explicit = _cfg(tmp_path, "precision=fp32")  # an explicit choice is the user's to make
    settle_launch_precision(explicit)
    assert explicit.precision.dtype == "fp32"
    fresh = _cfg(tmp_path, "run.fresh=true")
    settle_launch_precision(fresh)
    assert fresh.precision.dtype == "fp32" and "slower (measured)" in fresh.precision.reason


def test_slurm_leaves_auto_for_the_compute_node_which_resolves_once(tmp_path, cpu_ratio):
    cfg = _cfg(tmp_path, "cluster.kind=slurm")
    lines = settle_launch_precision(cfg)
    assert cfg.precision.dtype == "auto" and cpu_ratio["probes"] == 0
    assert lines == ["precision: auto (resolved on the compute node when the job starts)"]
    fp16 = _cfg(tmp_path, "cluster.kind=slurm", "precision=fp16", "parallel=zero2")  # fine on a CPU login node
    assert settle_launch_precision(fp16)[0].startswith("precision: fp16 (checked on the compute node")
    # job start on the compute node: the same resolution; a requeue (resolved config.yaml) keeps it
    assert resolve_run_precision(cfg)[0].startswith("precision: bf16")
    probes = cpu_ratio["probes"]
    assert resolve_run_precision(cfg)[0].startswith("precision: bf16") and cpu_ratio["probes"] == probes


def test_explicit_bf16_on_an_emulating_cpu_warns_and_fp16_is_refused(tmp_path, cpu_ratio):
    cpu_ratio["ratio"] = 0.02
    cfg = _cfg(tmp_path, "precision=bf16")
    lines = settle_launch_precision(cfg)
    assert cfg.precision.dtype == "bf16" and cfg.precision.resolved_from is None
    assert len(lines) == 2 and lines[1].startswith("warning: precision=bf16 on a CPU that emulates it")
    assert "50x slower" in lines[1]
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        settle_launch_precision(_cfg(tmp_path, "precision=fp16", "parallel=zero2"))


def test_the_engine_refuses_an_unresolved_auto():
    from parallel.config import OptimConfig, ParallelConfig, PrecisionConfig, ScheduleConfig
    from parallel.ds_config import build_ds_config

    with pytest.raises(ValueError, match="unresolved"):
        build_ds_config(ParallelConfig(), PrecisionConfig(dtype="auto"), OptimConfig(), ScheduleConfig(), 4, 1, 1)


def _dry_run(tmp_path, data, *overrides, isa="AVX2"):
    env = dict(run_env(), ONEDNN_MAX_CPU_ISA=isa)  # oneDNN then emulates bf16, as on an AVX2-only CPU
    cmd = [sys.executable, "-m", "launch.train", "run.name=e", f"run.root={tmp_path}", f"data.path={data}",
           "run.dry_run=true", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_on_a_cpu_that_emulates_bf16_the_real_probe_picks_fp32_and_warns_for_bf16(tmp_path, tiny_data):
    auto = _dry_run(tmp_path, tiny_data)
    assert auto.returncode == 0, auto.stderr
    lines = auto.stdout.splitlines()
    assert any(line.startswith("precision: fp32 (auto -> fp32: cpu:") for line in lines), auto.stdout
    printed = yaml.safe_load(auto.stdout.split("\n", 1)[1].split("would run:")[0])
    assert printed["precision"]["dtype"] == "fp32" and printed["precision"]["resolved_from"] == "auto"
    bf16 = _dry_run(tmp_path, tiny_data, "precision=bf16")
    assert bf16.returncode == 0, bf16.stderr
    warnings = [line for line in bf16.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "emulates it" in warnings[0] and "x slower (measured)" in warnings[0]


def test_an_engine_combination_that_auto_makes_impossible_is_one_line_at_launch(tmp_path, cpu_ratio, tiny_data):
    """Validated as `auto`, the pipeline ZeRO-0 config only becomes bf16 at launch, which
    DeepSpeed's pipeline cannot checkpoint: refused before any rank starts, naming auto's choice."""
    from launch.preflight import preflight

    cfg = _cfg(tmp_path, "parallel=pipeline", "parallel.zero_stage=0", "cluster.nproc=2", f"data.path={tiny_data}")
    with pytest.raises(ConfigError) as e:
        preflight(cfg)
    message = str(e.value)
    assert "\n" not in message and "zero_stage=1" in message and "precision=auto chose bf16" in message
    cpu_ratio["ratio"] = 0.01  # where auto picks fp32 the same config is fine
    assert preflight(_cfg(tmp_path, "parallel=pipeline", "parallel.zero_stage=0", "cluster.nproc=2",
                          f"data.path={tiny_data}"))[0].startswith("precision: fp32")
