"""Attention over rows that may hold several examples: padded (masked) or unpadded (varlen).

An `AttentionContext` is built once per forward from the batch's `attention_mask` (1 = real
token) and `position_ids` (0 at each example's first token); every layer asks it to attend.
Two layouts of the hidden states ("token-major": heads and head_dim last):
  padded    [B, L, ...]  every position computed; a boolean mask keeps attention inside each
                         example (and inside the local window); pads attend to the real tokens
                         of their row (as transformers does), so pad outputs stay finite.
  unpadded  [T, ...]     only the T real tokens (row-major), sequences delimited by cu_seqlens
                         (the layout of FlashAttention's varlen kernel). Linears, norms and the
                         MLM gather then skip the pads; attention runs through one backend:
                           flash:  flash_attn_varlen_func (CUDA, flash_attn installed);
                           varlen: PyTorch's own kernels on the real tokens, no [B,1,L,L] mask:
                                   SDPA on a nested (jagged) tensor made from cu_seqlens for
                                   global attention (on CUDA PyTorch's flash / memory-efficient
                                   varlen kernels), FlexAttention with a document + window block
                                   mask for local windows (compiled on CUDA; on the CPU
                                   FlexAttention has no backward, so a windowed layer that needs
                                   gradients there re-pads as sdpa does, and so does one with
                                   attention dropout, which FlexAttention lacks);
                           sdpa:   scattered back to [B, L] for one masked SDPA call and gathered
                                   again (the fastest on CPU: docs/benchmarks.md "Unpadded attention").
Rotary embeddings (cos, sin) for a theta are computed once per context, in the same layout.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from .layout import IGNORE_INDEX, batch_layout, default_positions, example_starts_mask, is_packed

BACKENDS = ("auto", "sdpa", "flash", "varlen")


@functools.lru_cache(maxsize=None)
def flash_import() -> tuple:
    """(flash_attn's varlen kernel, "") where it imports, else (None, why not): the package is an
    optional extra, and a wheel built for another CUDA/torch fails at import with its own error."""
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception as e:  # noqa: BLE001 - ImportError, or a build for another CUDA/torch
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
    return flash_attn_varlen_func, ""


def flash_varlen():
    """flash_attn's varlen kernel, or None where it does not import."""
    return flash_import()[0]


def backend_choice(name: str, unpad: bool, device: torch.device) -> tuple[str, str]:
    """(the kernel a context on this device uses, why). auto: FlashAttention on CUDA where
    flash_attn works, else PyTorch's varlen kernels on CUDA, masked SDPA on the CPU (measured
    fastest there) and on padded rows. An explicit kernel that cannot run is one clear error."""
    if name not in BACKENDS:
        raise ValueError(f"model.attention_backend={name!r}: expected one of {BACKENDS}")
    if name == "sdpa":
        return "sdpa", "model.attention_backend=sdpa"
    if name == "varlen":
        if not unpad:
            raise ValueError("model.attention_backend=varlen needs model.unpad=true")
        return "varlen", "model.attention_backend=varlen: " + VARLEN_KERNELS
    if not unpad or device.type != "cuda":
        if name == "flash":
            raise ValueError("model.attention_backend=flash needs model.unpad=true and a CUDA device")
        return "sdpa", "padded rows (model.unpad=false)" if not unpad else f"no CUDA device ({device.type})"
    kernel, why = flash_import()
    if kernel is None:
        if name == "flash":
            raise ValueError(f"model.attention_backend=flash: flash_attn does not import ({why}); "
                             "install a wheel for this CUDA/torch (pip install 'bert-pretrain[flash]') or use auto/varlen")
        return "varlen", f"auto: flash_attn does not import ({why}); " + VARLEN_KERNELS
    return "flash", "flash_attn varlen kernel on the real tokens"


VARLEN_KERNELS = ("PyTorch's varlen kernels on the real tokens (nested-tensor SDPA for global attention, "
                  "FlexAttention for local windows)")


def resolve_backend(name: str, unpad: bool, device: torch.device) -> str:
    """The kernel a context of this device uses (backend_choice without the reason)."""
    return backend_choice(name, unpad, device)[0]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class AttentionContext:
    """What every layer of one forward shares: the layout, the masks, the rotary tables.

    attention_mask, position_ids: [B, L] int (position_ids None = one example per row).
    layout: the batch's layout fields (pretrain/model/layout.py), computed by the loader on the
    CPU; None = computed here when needed (a device sync on a GPU). unpad: flatten to the real
    tokens. packed: some row holds several examples (known from the layout's shapes, or from
    position_ids being given when there is no layout); when False and no local window is asked
    for, the padded path uses a key mask only, and rotary tables of the default positions are
    cached across forwards.
    """

    def __init__(self, attention_mask: Optional[torch.Tensor], position_ids: Optional[torch.Tensor],
                 input_ids: torch.Tensor, *, unpad: bool, backend: str = "auto", layout: Optional[dict] = None):
        """input_ids: any [B, L] tensor of the batch (for its shape and device)."""
        b, l = input_ids.shape[:2]
        device = input_ids.device
        self.shape = (b, l)
        self.device = device
        self._layout = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                        for k, v in (layout or {}).items() if v is not None}
        if "example_starts" in self._layout:
            self.packed = is_packed(self._layout["example_starts"], b)
        else:
            self.packed = position_ids is not None
        self.valid = (torch.ones((b, l), dtype=torch.bool, device=device) if attention_mask is None
                      else attention_mask.to(device).bool())
        # One example per row: positions are 0..L-1 (the loader's are; pads continue the row).
        self._default_positions = position_ids is None or not self.packed
        self.positions = default_positions(input_ids) if self._default_positions else position_ids.to(device)
        self.unpadded = bool(unpad)
        self.backend = resolve_backend(backend, self.unpadded, device)
        self._masks: dict = {}
        self._rotary: dict = {}
        self.indices = self.cu_seqlens = None
        self.max_seqlen = l
        if self.unpadded:
            self.indices = self._field("token_index")
            self.cu_seqlens = self._field("cu_seqlens")
            if self.backend in ("flash", "varlen"):
                self.max_seqlen = int(self._field("max_seqlen"))

    def _field(self, name: str):
        """A layout field: the batch's, or computed once on this device (syncs on a GPU)."""
        if name not in self._layout:
            computed = batch_layout(self.valid, self.positions if self.packed else None)
            for key, value in computed.items():
                self._layout.setdefault(key, value)
        return self._layout[name]

    # ------------------------------------------------------------------ layout
    def token_positions(self) -> torch.Tensor:
        """Positions in the layout of the hidden states: [B, L] or [T]."""
        return self.positions.reshape(-1).index_select(0, self.indices) if self.unpadded else self.positions

    def to_layout(self, x: torch.Tensor) -> torch.Tensor:
        """A [B, L, ...] tensor in this context's layout ([T, ...] when unpadded)."""
        if not self.unpadded:
            return x
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.indices)

    def to_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states of this layout as [B, L, ...] (zeros at the pads when unpadded)."""
        if not self.unpadded:
            return x
        b, l = self.shape
        out = x.new_zeros((b * l, *x.shape[1:])).index_copy(0, self.indices, x)
        return out.view(b, l, *x.shape[1:])

    def example_starts(self) -> torch.Tensor:
        """Flat indices into [B*L] of every example's first token, row-major."""
        return self._field("example_starts")

    def first_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H]: the hidden state of every example's first token, in example order."""
        if self.unpadded:
            return hidden.index_select(0, self.cu_seqlens[:-1].long())
        if not self.packed:
            return hidden[:, 0]
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, self.example_starts())

    def labelled(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden [M, H], labels [M]) at the positions with a label, row-major: the batch's
        `masked_index` when the loader gave it (no sync), else found here."""
        flat_labels = labels.to(self.device).reshape(-1)
        if "masked_index" in self._layout:
            flat = self._layout["masked_index"]
        else:
            flat = torch.nonzero(flat_labels != IGNORE_INDEX).squeeze(1)
        picked = flat
        if self.unpadded:  # flat [B*L] index -> index among the real tokens
            picked = (torch.cumsum(self.valid.reshape(-1).long(), 0) - 1).index_select(0, flat)
        width = hidden.shape[-1]
        return hidden.reshape(-1, width).index_select(0, picked), flat_labels.index_select(0, flat)

    def _seq_id(self) -> torch.Tensor:
        """Example index per token (1-based within a row, 0 on padding): the block-diagonal mask."""
        if not self.packed:
            return self.valid.long()
        starts = example_starts_mask(self.valid, self.positions)
        return torch.cumsum(starts.long(), dim=1) * self.valid

    # ------------------------------------------------------------------ masks
    def mask(self, window: Optional[int]) -> torch.Tensor:
        """Boolean SDPA mask of the padded layout: [B, 1, 1, L] (one example per row, global) or
        [B, 1, L, L]; `window` = a local window of that many tokens (|i - j| <= window // 2)."""
        key = window or 0
        if key not in self._masks:
            if not self.packed and not window:
                self._masks[key] = self.valid[:, None, None, :]
            else:
                seq_id = self._seq_id()
                same = seq_id[:, :, None] == seq_id[:, None, :]
                allowed = same & self.valid[:, None, :]
                if window:
                    l = self.shape[1]
                    idx = torch.arange(l, device=self.valid.device)
                    allowed = allowed & ((idx[:, None] - idx[None, :]).abs() <= window // 2)[None]
                pad_query = ~self.valid[:, :, None]
                # Pads see their row's real tokens and themselves (never an empty row: no NaN).
                eye = torch.eye(self.shape[1], dtype=torch.bool, device=self.valid.device)[None]
                allowed = allowed | (pad_query & self.valid[:, None, :]) | (pad_query & eye)
                self._masks[key] = allowed[:, None]
        return self._masks[key]

    # ------------------------------------------------------------------ rotary
    def rotary(self, theta: float, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) fp32, [..., head_dim] in this layout, for rotary positions with `theta`."""
        key = (float(theta), head_dim)
        if self._default_positions and not self.unpadded:
            return _default_rotary(self.shape[1], float(theta), head_dim, self.device)
        if key not in self._rotary:
            self._rotary[key] = _rotary_tables(self.token_positions(), theta, head_dim)
        return self._rotary[key]

    # ------------------------------------------------------------------ attention
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: Optional[int],
               dropout_p: float) -> torch.Tensor:
        """q, k, v: [..., heads, d] in this layout -> the attention output in the same shape."""
        if self.unpadded and self.backend == "flash" and q.dtype in (torch.float16, torch.bfloat16):
            r = window // 2 if window else -1
            return flash_varlen()(q, k, v, self.cu_seqlens, self.cu_seqlens, self.max_seqlen, self.max_seqlen,
                                  dropout_p=dropout_p, causal=False, window_size=(r, r))
        if self.unpadded and self.backend == "varlen":
            if not window or window // 2 >= self.max_seqlen - 1:   # the window covers every example
                return self._nested_attend(q, k, v, dropout_p)
            if dropout_p == 0.0 and (q.device.type == "cuda" or not (torch.is_grad_enabled() and q.requires_grad)):
                return self._flex_attend(q, k, v, window)
        if self.unpadded:
            q, k, v = (self.to_padded(t) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=self.mask(window), dropout_p=dropout_p)
        out = out.transpose(1, 2)
        return self.to_layout(out) if self.unpadded else out

    def _nested_attend(self, q, k, v, dropout_p: float) -> torch.Tensor:
        """Global attention within each example: SDPA on jagged tensors over cu_seqlens (no mask,
        no padding; the sizes come from the layout, so nothing is read back from the device)."""
        if "offsets" not in self._masks:
            self._masks["offsets"] = self.cu_seqlens.long()
        offsets = self._masks["offsets"]

        def jagged(t):
            # SDPA wants each jagged input contiguous in [T, heads, d] (q, k, v are strided views).
            return torch.nested.nested_tensor_from_jagged(t.contiguous(), offsets=offsets, min_seqlen=1,
                                                          max_seqlen=self.max_seqlen).transpose(1, 2)

        out = F.scaled_dot_product_attention(jagged(q), jagged(k), jagged(v), dropout_p=dropout_p)
        return out.transpose(1, 2).values()

    def _flex_attend(self, q, k, v, window: int) -> torch.Tensor:
        """Local-window attention within each example: FlexAttention over the real tokens as one
        sequence, with a block mask (same example and |i - j| <= window // 2) that lets the
        kernel skip every block outside it."""
        key = ("flex", window)
        if key not in self._masks:
            self._masks[key] = _window_block_mask(self._token_example(), self.token_positions(), window // 2)
        out = _flex_kernel(q.device)(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                     block_mask=self._masks[key])
        return out[0].transpose(0, 1)

    def _token_example(self) -> torch.Tensor:
        """[T] int32: the example index of every real token (from cu_seqlens, no sync)."""
        t = self.indices.shape[0]
        starts = torch.zeros(t, dtype=torch.int32, device=self.device)
        starts.index_fill_(0, self.cu_seqlens[1:-1].long(), 1)
        return torch.cumsum(starts, 0, dtype=torch.int32)


def _window_block_mask(example: torch.Tensor, positions: torch.Tensor, radius: int):
    from torch.nn.attention.flex_attention import create_block_mask

    def inside(b, h, q_idx, kv_idx):
        return (example[q_idx] == example[kv_idx]) & ((positions[q_idx] - positions[kv_idx]).abs() <= radius)

    t = example.shape[0]
    return create_block_mask(inside, None, None, t, t, device=example.device, _compile=example.device.type == "cuda")


@functools.lru_cache(maxsize=None)
def _flex_kernel(device: torch.device):
    """flex_attention, compiled where it runs as a fused kernel (CUDA; one compile for every
    token count, dynamic shapes); eager elsewhere (a reference implementation, forward only)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True) if device.type == "cuda" else flex_attention


def _rotary_tables(positions: torch.Tensor, theta: float, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    pos = positions.float()
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim))
    freqs = pos[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


@functools.lru_cache(maxsize=64)
def _default_rotary(length: int, theta: float, head_dim: int, device: torch.device):
    """[L, head_dim] tables of positions 0..L-1, shared by every forward of that shape (rows of
    one example each, e.g. every layer of an unpacked pipeline stage). Made outside inference
    mode so a later training forward may save them for backward."""
    with torch.inference_mode(False), torch.no_grad():
        return _rotary_tables(torch.arange(length, device=device), theta, head_dim)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [..., heads, d] with cos/sin [..., d] (computed in fp32, as
    transformers' ModernBERT does, then cast back to x's dtype)."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)
