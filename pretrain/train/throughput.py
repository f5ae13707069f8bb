"""Speed and efficiency numbers logged every N steps: tokens/s, samples/s, MFU, data wait, memory."""
from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

# Dense bf16/fp16 tensor-core peaks (FLOP/s, spec sheets) of common accelerators, used for MFU
# when trainer.peak_flops is not set and the GPU computes that dtype natively. Matched by substring
# of torch.cuda.get_device_name(). (H200: 989 TFLOP/s spec; ~790 measured on an 8192^3 matmul.)
_GPU_PEAK_16BIT = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L4": 121e12,
    "A10G": 125e12, "A10": 125e12, "V100": 125e12, "T4": 65e12, "RTX 4090": 165e12, "RTX 3090": 71e12,
    "MI300X": 1307e12,
}


@dataclass(frozen=True)
class Peak:
    """The per-device FLOP/s MFU is reported against, and where the number comes from."""
    flops: float
    source: str

    def line(self) -> str:
        return f"{self.flops / 1e12:.3g} TFLOP/s per device, {self.source}"


def _table_peak(dtype: str, device: torch.device) -> Optional[float]:
    """The spec-sheet peak where it applies: fp16, or bf16 on sm_80+ (fp32 and emulated bf16 are measured)."""
    from parallel.device import cuda_capability

    if device.type != "cuda" or dtype == "fp32" or (dtype == "bf16" and cuda_capability(device) < (8, 0)):
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in _GPU_PEAK_16BIT.items() if key in name), None)


def peak_flops_per_device(dtype: str, configured: Optional[float], device: Optional[torch.device] = None) -> Peak:
    """MFU's denominator for `dtype` (the precision the run trains in) on `device` (default: this
    process's compute device): trainer.peak_flops if set, else the spec table for a known GPU's
    native 16-bit dtype, else a matmul in that dtype measured now on that device."""
    from parallel.device import compute_device, describe

    device = device or compute_device()
    if configured:
        return Peak(float(configured), f"trainer.peak_flops (set), {dtype} on {describe(device)}")
    table = _table_peak(dtype, device)
    if table is not None:
        return Peak(table, f"dense {dtype} spec of {torch.cuda.get_device_name(device)}")
    return measured_matmul_peak(dtype, device)


def measured_matmul_peak(dtype: str, device: Optional[torch.device] = None) -> Peak:
    """The best measured matmul rate in `dtype` on `device` (parallel.device.matmul_peak: the one
    probe, time-bounded so an emulated dtype costs a fraction of a second, not seconds)."""
    from parallel.device import compute_device, matmul_peak

    measured = matmul_peak(dtype, device or compute_device())
    return Peak(measured.flops, f"measured: {measured.line()}")


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform != "darwin" else rss / 2**30


class Meter:
    """Accumulates between two log points; all numbers are for this rank unless scaled."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.data_seconds = 0.0
        self.tokens = 0
        self.samples = 0
        self.positions = 0
        self.flops = 0.0
        self.steps = 0

    def add(self, tokens: int, samples: int, flops: float, data_seconds: float, positions: int = 0) -> None:
        """tokens: real (non-pad) tokens; samples: examples; positions: all row positions."""
        self.tokens += tokens
        self.samples += samples
        self.positions += positions
        self.flops += flops
        self.data_seconds += data_seconds
        self.steps += 1

    def summary(self, world_size: int, peak_per_device: float, device: torch.device) -> dict[str, float]:
        """`tokens`, `samples`, `flops` are global (all ranks) sums."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        return {
            "tokens_per_s": self.tokens / elapsed,
            "samples_per_s": self.samples / elapsed,
            "fill": self.tokens / self.positions if self.positions else float("nan"),
            "mfu": self.flops / (elapsed * peak_per_device * world_size),
            "data_wait": self.data_seconds / elapsed,
            "step_time": elapsed / max(self.steps, 1),
            "peak_mem_gb": peak_memory_gb(device),
        }
