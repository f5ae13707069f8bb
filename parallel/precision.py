"""`precision=auto`: the training dtype that fits the device, with the reason.

Rules (DESIGN.md): bf16 where the device computes it natively (CUDA compute capability >= 8.0;
a CPU with AVX512-BF16 or AMX *and* a probe confirming bf16 is not emulated), fp16 with loss
scaling on CUDA GPUs without bf16 (V100, T4), fp32 elsewhere. The CPU flags alone are not
trusted: VMs and oneDNN settings (ONEDNN_MAX_CPU_ISA) can make a flagged CPU emulate bf16.

Margins: the probe's bf16/fp32 ratio falls in two populations far apart — native 1.3-4.5x,
emulated 0.005-0.03x, on an idle or a loaded machine (bf16_speed_ratio). BF16_NATIVE_RATIO sits
between them with >= 4x margin from either (noisy) side, so two launches on the same machine do
not flip between bf16 and fp32; a flagless CPU never picks bf16 whatever the probe reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .device import bf16_speed_ratio, cpu_features, cuda_capability, describe

DTYPES = ("fp32", "bf16", "fp16")   # what the engine runs
CHOICES = ("auto", *DTYPES)         # what precision.dtype accepts
BF16_NATIVE_RATIO = 0.3             # bf16/fp32 matmul speed above which CPU bf16 counts as native


@dataclass(frozen=True)
class PrecisionChoice:
    dtype: str                     # fp32 | bf16 | fp16
    reason: str                    # one line: why this dtype on this device
    warning: Optional[str] = None  # set when an explicit choice will run slowly here


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _measured(ratio: float) -> str:
    if ratio >= 1:
        return f"bf16 matmul {ratio:.2g}x fp32 speed (measured)"
    return f"bf16 matmul {ratio:.2g}x fp32 speed = {1 / max(ratio, 1e-9):.0f}x slower (measured)"


def _cpu_bf16() -> tuple[bool, str]:
    features = cpu_features()
    flagged = features["avx512_bf16"] or features["amx"]
    ratio = bf16_speed_ratio("cpu")
    native = flagged and ratio >= BF16_NATIVE_RATIO
    flags = "AVX512_BF16/AMX present" if flagged else "no AVX512_BF16/AMX"
    return native, f"{flags}, {_measured(ratio)}"


def _cuda_bf16_evidence() -> str:
    try:
        return _measured(bf16_speed_ratio("cuda"))
    except RuntimeError as e:  # some pre-sm_80 stacks have no bf16 matmul at all
        return f"bf16 matmul failed: {str(e).splitlines()[0]}"


def resolve_precision(requested: str, device: Optional[torch.device] = None) -> PrecisionChoice:
    """Resolve `precision.dtype` (auto or explicit) for `device` (default: this process's).

    Raises ValueError (one line) for a value not in CHOICES and for fp16 without CUDA.
    """
    if requested not in CHOICES:
        raise ValueError(f"precision.dtype={requested!r}: expected one of {', '.join(CHOICES)}")
    device = device or default_device()
    where = describe(device)
    if device.type == "cuda":
        major, minor = cuda_capability(device)
        native_bf16 = (major, minor) >= (8, 0)
        if requested == "auto":
            if native_bf16:
                return PrecisionChoice("bf16", f"auto -> bf16: {where} computes bf16 natively (sm_80+)")
            return PrecisionChoice("fp16", f"auto -> fp16 with dynamic loss scaling: {where} has no native bf16")
        warning = None
        if requested == "bf16" and not native_bf16:
            warning = (f"precision=bf16 on {where}: no native bf16 before sm_80 ({_cuda_bf16_evidence()}); "
                       "precision=auto picks fp16 with loss scaling here")
        return PrecisionChoice(requested, f"{requested} (set explicitly) on {where}", warning)
    if requested == "fp16":
        raise ValueError("precision.dtype=fp16 needs a CUDA GPU; use precision=auto, bf16 or fp32 on this machine")
    if requested == "fp32":
        return PrecisionChoice("fp32", f"fp32 (set explicitly) on {where}")
    native, evidence = _cpu_bf16()
    if requested == "auto":
        return PrecisionChoice("bf16" if native else "fp32", f"auto -> {'bf16' if native else 'fp32'}: {where}; {evidence}")
    warning = None
    if not native:
        warning = (f"precision=bf16 on a CPU that emulates it ({evidence}): training will be about that much "
                   "slower; precision=auto (fp32 here) or precision=fp32 avoids it")
    return PrecisionChoice("bf16", f"bf16 (set explicitly) on {where}; {evidence}", warning)
