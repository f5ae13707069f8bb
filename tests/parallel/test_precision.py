"""precision=auto and the device probes: the rules with the probes replaced, the probes for real."""
import math

import pytest
import torch

from parallel import device as device_mod
from parallel import precision
from parallel.precision import BF16_NATIVE_RATIO, CHOICES, DTYPES, resolve_precision

CPU = torch.device("cpu")
AMX = {"avx2": True, "avx512": True, "avx512_bf16": True, "amx": True}
AVX2 = {"avx2": True, "avx512": False, "avx512_bf16": False, "amx": False}


@pytest.fixture
def cpu_like(monkeypatch):
    """Pretend to be a CPU with the given flags whose bf16 matmul runs at `ratio` x fp32."""
    def set_cpu(flags, ratio):
        probes = []
        monkeypatch.setattr(precision, "cpu_features", lambda: dict(flags))
        monkeypatch.setattr(precision, "bf16_speed_ratio", lambda device_type="cpu": probes.append(device_type) or ratio)
        return probes
    return set_cpu


@pytest.fixture
def cuda_like(monkeypatch):
    def set_gpu(capability, ratio=1.0):
        monkeypatch.setattr(precision, "cuda_capability", lambda device=None: capability)
        monkeypatch.setattr(precision, "describe", lambda device: f"cuda: Fake GPU (sm_{capability[0]}{capability[1]})")
        monkeypatch.setattr(precision, "bf16_speed_ratio", lambda device_type="cpu": ratio)
    return set_gpu


def test_choices_are_one_list_everywhere():
    from parallel import ds_config
    from pretrain.train import config

    assert CHOICES == ("auto", *DTYPES) and ds_config.DTYPES is DTYPES
    assert config._CHOICES["precision.dtype"] is CHOICES


def test_auto_on_a_cpu_with_native_bf16_picks_bf16_and_says_why(cpu_like):
    probes = cpu_like(AMX, 2.4)
    choice = resolve_precision("auto", CPU)
    assert choice.dtype == "bf16" and choice.warning is None and probes == ["cpu"]
    assert choice.reason.startswith("auto -> bf16") and "AVX512_BF16/AMX present" in choice.reason
    assert "2.4x fp32 speed (measured)" in choice.reason


def test_auto_where_flags_lie_or_are_absent_picks_fp32(cpu_like):
    cpu_like(AMX, 0.014)  # flagged, but oneDNN emulates (ONEDNN_MAX_CPU_ISA=AVX2, some VMs)
    choice = resolve_precision("auto", CPU)
    assert choice.dtype == "fp32" and "71x slower (measured)" in choice.reason
    cpu_like(AVX2, 5.0)  # a fast-looking probe never makes a flagless CPU pick bf16
    choice = resolve_precision("auto", CPU)
    assert choice.dtype == "fp32" and "no AVX512_BF16/AMX" in choice.reason


@pytest.mark.parametrize("ratio, dtype", [(1.3, "bf16"), (4 * BF16_NATIVE_RATIO, "bf16"),
                                          (BF16_NATIVE_RATIO / 4, "fp32"), (0.03, "fp32")])
def test_the_threshold_leaves_a_margin_on_both_sides(cpu_like, ratio, dtype):
    # Measured populations (docs/benchmarks.md): native 1.3-4.5x, emulated 0.005-0.03x.
    cpu_like(AMX, ratio)
    assert resolve_precision("auto", CPU).dtype == dtype
    assert 1.3 / BF16_NATIVE_RATIO >= 4 and BF16_NATIVE_RATIO / 0.03 >= 4


def test_explicit_bf16_on_an_emulating_cpu_runs_with_one_warning_naming_the_slowdown(cpu_like):
    cpu_like(AVX2, 0.02)
    choice = resolve_precision("bf16", CPU)
    assert choice.dtype == "bf16" and "set explicitly" in choice.reason
    assert "\n" not in choice.warning and "50x slower" in choice.warning and "precision=fp32" in choice.warning
    cpu_like(AMX, 2.0)
    assert resolve_precision("bf16", CPU).warning is None


def test_explicit_fp32_needs_no_probe_and_fp16_needs_cuda(cpu_like):
    probes = cpu_like(AVX2, 0.02)
    assert resolve_precision("fp32", CPU).dtype == "fp32" and probes == []
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="expected one of auto, fp32, bf16, fp16"):
        resolve_precision("fp8", CPU)


def test_cuda_rules_by_compute_capability(cuda_like):
    gpu = torch.device("cuda", 0)
    cuda_like((9, 0))
    assert resolve_precision("auto", gpu).dtype == "bf16"
    cuda_like((7, 0), ratio=0.05)  # V100
    choice = resolve_precision("auto", gpu)
    assert choice.dtype == "fp16" and "loss scaling" in choice.reason
    explicit = resolve_precision("bf16", gpu)
    assert explicit.dtype == "bf16" and "20x slower" in explicit.warning and "fp16" in explicit.warning
    assert resolve_precision("fp16", gpu).dtype == "fp16"


def test_bf16_ratio_probe_is_real_positive_and_leaves_the_thread_count_alone():
    threads = torch.get_num_threads()
    ratio = device_mod.bf16_speed_ratio.__wrapped__("cpu", min_samples=2, budget_s=0.05)
    assert math.isfinite(ratio) and ratio > 0
    assert torch.get_num_threads() == threads


def test_this_machines_auto_choice_agrees_with_its_features():
    choice = resolve_precision("auto", CPU)
    features = device_mod.cpu_features()
    if not (features["avx512_bf16"] or features["amx"]):
        assert choice.dtype == "fp32"
    assert choice.dtype in ("bf16", "fp32") and "(measured)" in choice.reason


def test_matmul_peak_grows_the_square_within_its_cap_and_records_what_it_measured():
    peak = device_mod.matmul_peak("fp32", CPU, max_n=512, budget_s=0.05)
    assert peak.flops > 0 and peak.dtype == "fp32" and peak.n in (256, 512)
    assert "fp32" in peak.line() and "cpu:" in peak.line()
    assert device_mod.matmul_peak("bf16", CPU, max_n=256, budget_s=0.01).n == 256


def test_describe_names_the_cpu_features():
    line = device_mod.describe(CPU)
    assert line.startswith("cpu: capability") and "threads" in line


def test_probes_leave_the_global_rng_alone():
    """The MFU probe runs inside training ranks, after the seeds are set."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    device_mod.matmul_peak("fp32", CPU, max_n=256, budget_s=0.01)
    device_mod.bf16_speed_ratio.__wrapped__("cpu", min_samples=1, budget_s=0.01)
    assert torch.equal(torch.rand(3), expected)
