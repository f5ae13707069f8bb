"""Speed and efficiency numbers logged every N steps: tokens/s, samples/s, MFU, data wait, memory."""
from __future__ import annotations

import resource
import sys
import time

import torch

# Dense bf16/fp16 tensor-core peaks (FLOP/s) of common accelerators, used for MFU when
# trainer.peak_flops is not set. Matched by substring of torch.cuda.get_device_name().
_GPU_PEAK_BF16 = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L4": 121e12,
    "A10G": 125e12, "A10": 125e12, "V100": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "MI300X": 1307e12,
}


def peak_flops_per_device(dtype: str, configured: float | None) -> float:
    if configured:
        return float(configured)
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in _GPU_PEAK_BF16.items():
            if key in name:
                return value if dtype != "fp32" else value / 16  # TF32-off fp32 is ~1/16 of bf16 on these parts
    return measured_matmul_peak(dtype)


def measured_matmul_peak(dtype: str, n: int = 1024, repeats: int = 5) -> float:
    """Best-of-N FLOP/s of one square matmul on the CPU: the honest ceiling for MFU here."""
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float32, "fp32": torch.float32}[dtype]
    a = torch.randn(n, n, dtype=torch_dtype)
    b = torch.randn(n, n, dtype=torch_dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


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
        self.flops = 0.0
        self.steps = 0

    def add(self, tokens: int, samples: int, flops: float, data_seconds: float) -> None:
        self.tokens += tokens
        self.samples += samples
        self.flops += flops
        self.data_seconds += data_seconds
        self.steps += 1

    def summary(self, world_size: int, peak_per_device: float, device: torch.device) -> dict[str, float]:
        """`tokens`, `samples`, `flops` are global (all ranks) sums."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        return {
            "tokens_per_s": self.tokens / elapsed,
            "samples_per_s": self.samples / elapsed,
            "mfu": self.flops / (elapsed * peak_per_device * world_size),
            "data_wait": self.data_seconds / elapsed,
            "step_time": elapsed / max(self.steps, 1),
            "peak_mem_gb": peak_memory_gb(device),
        }
