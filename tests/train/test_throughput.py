"""MFU's peak: per dtype and per device, from the setting, the GPU table or the one matmul probe."""
import pytest
import torch

import parallel.device as device_mod
from pretrain.train.throughput import peak_flops_per_device


@pytest.fixture
def fake_gpu(monkeypatch):
    measured = []

    def fake_peak(dtype, device, max_n=None, budget_s=0.3):
        measured.append((dtype, device.type))
        return device_mod.MatmulPeak(1e12, dtype, 8192, "cuda: fake")

    def set_gpu(name, capability):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(device_mod, "cuda_capability", lambda device=None: capability)
        monkeypatch.setattr(device_mod, "matmul_peak", fake_peak)
        return measured
    return set_gpu


def test_known_gpu_uses_its_dense_16bit_spec_for_the_native_dtype(fake_gpu):
    measured = fake_gpu("NVIDIA H200", (9, 0))
    gpu = torch.device("cuda", 0)
    peak = peak_flops_per_device("bf16", None, gpu)
    assert peak.flops == 989e12 and "dense bf16 spec of NVIDIA H200" in peak.source and measured == []
    assert peak_flops_per_device("fp16", None, gpu).flops == 989e12


def test_fp32_and_emulated_bf16_on_a_gpu_are_measured_in_that_dtype(fake_gpu):
    measured = fake_gpu("Tesla V100-SXM2-16GB", (7, 0))
    gpu = torch.device("cuda", 0)
    assert peak_flops_per_device("fp16", None, gpu).flops == 125e12
    bf16 = peak_flops_per_device("bf16", None, gpu)
    fp32 = peak_flops_per_device("fp32", None, gpu)
    assert bf16.flops == fp32.flops == 1e12 and measured == [("bf16", "cuda"), ("fp32", "cuda")]
    assert "measured" in bf16.source and "bf16" in bf16.source


def test_configured_peak_wins_and_says_so():
    peak = peak_flops_per_device("bf16", 2.5e12, torch.device("cpu"))
    assert peak.flops == 2.5e12 and "trainer.peak_flops" in peak.source and "bf16" in peak.source


def test_cpu_peak_is_measured_in_the_dtype_in_use():
    peak = peak_flops_per_device("fp32", None, torch.device("cpu"))
    assert peak.flops > 0 and "fp32" in peak.line() and "measured" in peak.line() and "cpu:" in peak.line()
