"""Which attention kernel runs, and why, is decided in one place and said once; a forced
FlashAttention that cannot run is one clear error naming the reason."""
import pytest
import torch

from pretrain.model import attention


def test_cpu_and_padded_rows_use_sdpa_and_say_why():
    assert attention.backend_choice("auto", True, torch.device("cpu")) == ("sdpa", "no CUDA device (cpu)")
    assert attention.backend_choice("auto", False, torch.device("cuda", 0))[1] == "padded rows (model.unpad=false)"
    assert attention.backend_choice("sdpa", True, torch.device("cuda", 0))[0] == "sdpa"
    with pytest.raises(ValueError, match="needs model.unpad=true and a CUDA device"):
        attention.backend_choice("flash", True, torch.device("cpu"))
    assert attention.backend_choice("varlen", True, torch.device("cpu"))[0] == "varlen"
    with pytest.raises(ValueError, match="attention_backend=varlen needs model.unpad=true"):
        attention.backend_choice("varlen", False, torch.device("cpu"))


def test_a_broken_flash_wheel_is_named_in_the_fallback_and_in_the_error(monkeypatch):
    monkeypatch.setattr(attention, "flash_import", lambda: (None, "ImportError: undefined symbol _ZN3c10"))
    gpu = torch.device("cuda", 0)
    backend, why = attention.backend_choice("auto", True, gpu)
    assert backend == "varlen" and "flash_attn does not import (ImportError: undefined symbol _ZN3c10)" in why
    assert "nested-tensor SDPA" in why and "FlexAttention" in why
    with pytest.raises(ValueError, match=r"attention_backend=flash: flash_attn does not import \(ImportError") as e:
        attention.backend_choice("flash", True, gpu)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(attention, "flash_import", lambda: (object(), ""))
    assert attention.backend_choice("auto", True, gpu)[0] == "flash"


def test_the_real_import_reports_why_it_failed_or_works():
    kernel, why = attention.flash_import()
    assert (kernel is None) == bool(why)
