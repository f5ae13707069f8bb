"""`precision=auto`: the training dtype that fits the device, with the reason.

Rules (DESIGN.md): bf16 where the device computes it natively (CUDA compute capability >= 8.0;
a CPU with AVX512-BF16 or AMX *and* a probe confirming bf16 is not slower than fp32), fp16 with
loss scaling on CUDA GPUs without bf16 (V100, T4), fp32 elsewhere. The CPU flags alone are not
trusted: VMs and oneDNN settings (ONEDNN_MAX_CPU_ISA) can make a flagged CPU emulate bf16.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .device import bf16_speed_ratio, cpu_features, cuda_capability, describe

DTYPES = ("fp32", "bf16", "fp16")
CHOICES = ("auto", *DTYPES)
# bf16 counts as native on a CPU when its matmul runs at least this fraction of fp32's speed
# (measured: ~2-3x on AMX, ~0.01x where emulated on AVX2-only machines).
BF16_NATIVE_RATIO = 0.9


@dataclass(frozen=True)
class PrecisionChoice:
    dtype: str                     # fp32 | bf16 | fp16
    reason: str                    # one line: why this dtype on this device
    warning: Optional[str] = None  # set when an explicit choice will run slowly here


def _cpu_bf16(device_type: str = "cpu") -> tuple[bool, str]:
    features = cpu_features()
    flagged = features["avx512_bf16"] or features["amx"]
    ratio = bf16_speed_ratio(device_type)
    native = flagged and ratio >= BF16_NATIVE_RATIO
    flags = "AVX512_BF16/AMX present" if flagged else "no AVX512_BF16/AMX"
    return native, f"{flags}, bf16 matmul at {ratio:.2g}x fp32 speed (measured)"


def resolve_precision(requested: str, device: Optional[torch.device] = None) -> PrecisionChoice:
    """Resolve `precision.dtype` (auto or explicit) for `device` (default: this process's)."""
    if requested not in CHOICES:
        raise ValueError(f"precision.dtype={requested!r}: expected one of {', '.join(CHOICES)}")
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    where = describe(device)
    if device.type == "cuda":
        major, minor = cuda_capability(device)
        native_bf16 = (major, minor) >= (8, 0)
        if requested == "auto":
            if native_bf16:
                return PrecisionChoice("bf16", f"auto -> bf16: {where} computes bf16 natively")
            return PrecisionChoice("fp16", f"auto -> fp16 with dynamic loss scaling: {where} has no native bf16")
        warning = None
        if requested == "bf16" and not native_bf16:
            warning = (f"precision=bf16 on {where}: no native bf16 before sm_80, expect it to be slow; "
                       "precision=auto picks fp16 with loss scaling here")
        return PrecisionChoice(requested, f"{requested} (set explicitly) on {where}", warning)
    if requested == "fp16":
        raise ValueError("precision.dtype=fp16 needs a CUDA GPU; use precision=auto, bf16 or fp32 on this machine")
    native, evidence = _cpu_bf16(device.type)
    if requested == "auto":
        if native:
            return PrecisionChoice("bf16", f"auto -> bf16: {where}; {evidence}")
        return PrecisionChoice("fp32", f"auto -> fp32: {where}; {evidence}")
    warning = None
    if requested == "bf16" and not native:
        warning = (f"precision=bf16 on a CPU that emulates it ({evidence}): training will be that much "
                   "slower; use precision=auto (fp32 here) or precision=fp32")
    return PrecisionChoice(requested, f"{requested} (set explicitly) on {where}", warning)
