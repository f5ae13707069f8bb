"""What this process's compute device can do, detected, never assumed.

Why a module of its own: CPUs differ between machines of the same kind (one has AVX512-BF16 and
AMX, the next only AVX2, where a bf16 matmul is emulated and ~50-100x slower than fp32), and GPUs
differ in what they compute natively (bf16 needs compute capability >= 8.0). Precision choice,
MFU peaks and benchmark records all read the device through the functions here.

The probes are time-bounded matmuls: they stay well under a second even where bf16 is emulated,
and they take the best of several interleaved samples so a machine shared with other processes
(a load burst slows a sample, never speeds one up) still measures what the device can do.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def rank_device_index(local_rank: int, device_count: int) -> int:
    """The one device-selection rule (DeepSpeed's too: `set_device(LOCAL_RANK)`): local rank k
    computes on visible device k. More ranks on a node than visible devices is an error, never
    a silent share of one device by several ranks."""
    if device_count < 1:
        raise ValueError("no accelerator device is visible")
    if not 0 <= local_rank < device_count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ValueError(f"local rank {local_rank} has no device of its own: {device_count} visible"
                         + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
                         + "; one rank per device: set cluster.nproc <= the GPUs per node")
    return local_rank


def compute_device(local_rank: int = 0) -> torch.device:
    """The device a rank computes on: CUDA device `local_rank` where CUDA works, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", rank_device_index(local_rank, torch.cuda.device_count()))
    return torch.device("cpu")


def allow_fast_fp32_matmul(device_type: str) -> None:
    """TF32 for fp32 matmuls and convolutions on CUDA (Ampere and later: ~8x the fp32 rate at
    10-bit mantissa products, fp32 accumulation; what PyTorch's own guidance suggests for
    training). No effect elsewhere."""
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def visible_gpus() -> int:
    """CUDA devices this process sees (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cpu_features() -> dict[str, bool]:
    """ISA features that decide whether bf16 is native on this CPU (torch's own cpuinfo probe).

    Flags say what the silicon has, not what the kernels use: ONEDNN_MAX_CPU_ISA or a VM can make
    a flagged CPU emulate bf16, which is why precision=auto also measures (bf16_speed_ratio).
    """
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


def _operands(dtype: str, device: torch.device, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch_dtype = TORCH_DTYPES[dtype]
    if device.type == "cpu" and torch_dtype is torch.float16:
        torch_dtype = torch.float32  # fp16 compute is a GPU feature; on CPU the honest peak is fp32
    gen = torch.Generator(device=device).manual_seed(n)  # never the global RNG: training draws from it
    a = torch.randn(n, n, generator=gen, device=device).to(torch_dtype)
    b = torch.randn(n, n, generator=gen, device=device).to(torch_dtype)
    return a, b


def _time_one(a: torch.Tensor, b: torch.Tensor) -> float:
    _sync(a.device)
    t0 = time.perf_counter()
    torch.mm(a, b)
    _sync(a.device)
    return time.perf_counter() - t0


@dataclass(frozen=True)
class MatmulPeak:
    """A measured matmul rate: what MFU is reported against, and where it came from."""
    flops: float          # FLOP/s
    dtype: str
    n: int                # the square size measured
    device: str           # describe(device)

    def line(self) -> str:
        return f"{self.flops / 1e9:.1f} GFLOP/s ({self.dtype} {self.n}^3 matmul, best of several, {self.device})"


def matmul_peak(dtype: str, device: torch.device, max_n: Optional[int] = None,
                budget_s: float = 0.3) -> MatmulPeak:
    """Best FLOP/s of an n x n x n matmul in `dtype` on `device`, measured within ~`budget_s`.

    n grows from 256 by doubling up to `max_n` (default 1024 on CPU, 8192 on CUDA, where smaller
    squares leave the tensor cores idle) while one matmul still fits the budget a few times over;
    an emulated dtype therefore stays at a small n instead of taking seconds per sample.
    """
    max_n = max_n or (8192 if device.type == "cuda" else 1024)
    n = min(256, max_n)
    a, b = _operands(dtype, device, n)
    _time_one(a, b)  # warm-up at each size: thread pool / cuBLAS start, kernel selection, allocator
    one = _time_one(a, b)
    while n * 2 <= max_n and one * 8 * 4 < budget_s:  # the next size costs ~8x; keep ~4 samples of it
        n *= 2
        a, b = _operands(dtype, device, n)
        _time_one(a, b)
        one = _time_one(a, b)
    best = one
    deadline = time.perf_counter() + budget_s
    samples = 1
    while samples < 3 or (samples < 20 and time.perf_counter() < deadline):
        best = min(best, _time_one(a, b))
        samples += 1
    return MatmulPeak(2 * n**3 / max(best, 1e-12), dtype, n, describe(device))


def matmul_flops(dtype: str, device: torch.device, max_n: Optional[int] = None, budget_s: float = 0.3) -> float:
    """FLOP/s of matmul_peak (the number only)."""
    return matmul_peak(dtype, device, max_n, budget_s).flops


@lru_cache(maxsize=None)
def bf16_speed_ratio(device_type: str = "cpu", n: int = 256, min_samples: int = 5,
                     budget_s: float = 0.2) -> float:
    """bf16 / fp32 matmul throughput on this device: > 1 where bf16 is native (AMX, tensor cores),
    ~0.005-0.03 where it is emulated (AVX2-only CPUs, or ONEDNN_MAX_CPU_ISA=AVX2 on an AMX one).

    Measured to be robust on a shared 2-core machine (docs/benchmarks.md): on the CPU it runs on
    ONE thread, since a multi-threaded matmul waits for its slowest thread and another process
    on the cores made 2-thread ratios swing 1.8-74x (native) and 0.01-0.19 (emulated), while
    1-thread ratios stayed 2.4-4.1 and 0.005-0.022, idle or loaded. n=256 because smaller squares
    are dominated by call overhead (n=128 read 0.6 on an AMX CPU). Samples of the two dtypes
    alternate so a load burst hits both, and each keeps its best (load only ever slows a sample).
    Takes a few ms where bf16 is native, ~0.2-0.5 s where it is emulated (~20-40 ms per sample).
    """
    device = torch.device(device_type)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        fp32 = _operands("fp32", device, n)
        bf16 = _operands("bf16", device, n)
        _time_one(*fp32)
        _time_one(*bf16)  # warm-ups
        best = {"fp32": float("inf"), "bf16": float("inf")}
        deadline = time.perf_counter() + budget_s
        samples = 0
        while samples < min_samples or (samples < 50 and time.perf_counter() < deadline):
            best["fp32"] = min(best["fp32"], _time_one(*fp32))
            best["bf16"] = min(best["bf16"], _time_one(*bf16))
            samples += 1
    finally:
        torch.set_num_threads(threads)
    return best["fp32"] / max(best["bf16"], 1e-12)
