"""What this process's compute device can do, detected, never assumed.

Why a module of its own: CPUs differ between machines of the same kind (one has AVX512-BF16 and
AMX, the next only AVX2, where a bf16 matmul is emulated and ~100x slower than fp32), and GPUs
differ in what they compute natively (bf16 needs compute capability >= 8.0). Precision choice,
MFU peaks and benchmark records all read the device through the functions here.
"""
from __future__ import annotations

import time
from functools import lru_cache
from typing import Optional

import torch

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def compute_device(local_rank: int = 0) -> torch.device:
    """The device a rank computes on: CUDA device `local_rank` where CUDA works, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def cpu_features() -> dict[str, bool]:
    """ISA features that decide whether bf16 is native on this CPU (torch's own cpuinfo probe)."""
    cpu = torch.cpu
    probe = {
        "avx2": getattr(cpu, "_is_avx2_supported", None),
        "avx512": getattr(cpu, "_is_avx512_supported", None),
        "avx512_bf16": getattr(cpu, "_is_avx512_bf16_supported", None),
        "amx": getattr(cpu, "_is_amx_tile_supported", None),
    }
    return {name: bool(fn()) if fn is not None else False for name, fn in probe.items()}


def cuda_capability(device: Optional[torch.device] = None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def describe(device: torch.device) -> str:
    """One line for logs and benchmark records: which device, and what it can do."""
    if device.type == "cuda":
        major, minor = cuda_capability(device)
        return f"cuda: {torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    features = [name.upper() for name, ok in cpu_features().items() if ok]
    return (f"cpu: capability {torch.backends.cpu.get_cpu_capability()}, "
            f"features {'+'.join(features) or 'none detected'}, {torch.get_num_threads()} threads")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(dtype: str, device: torch.device, n: int = 1024, repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of one n x n x n matmul in `dtype` on `device` (measured)."""
    torch_dtype = TORCH_DTYPES[dtype]
    if device.type == "cpu" and torch_dtype is torch.float16:
        torch_dtype = torch.float32  # fp16 compute is a GPU feature; on CPU the honest peak is fp32
    a = torch.randn(n, n, device=device).to(torch_dtype)
    b = torch.randn(n, n, device=device).to(torch_dtype)
    for _ in range(2):  # warm-up: thread pool start, kernel selection, allocator
        torch.mm(a, b)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / max(best, 1e-12)


@lru_cache(maxsize=None)
def bf16_speed_ratio(device_type: str = "cpu", n: int = 256, repeats: int = 10) -> float:
    """bf16 / fp32 matmul throughput on this device (a probe of ~0.1 s even where bf16 is emulated).

    > 1 where bf16 is native (AMX, tensor cores); ~0.01 where it is emulated (AVX2-only CPUs).
    """
    device = torch.device(device_type)
    fp32 = matmul_flops("fp32", device, n, repeats)
    bf16 = matmul_flops("bf16", device, n, repeats)
    return bf16 / fp32
