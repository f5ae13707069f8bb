"""The layout of a batch of rows: where the examples and the real and masked tokens are.

Why it travels in the batch: every field below has a size that depends on the data (how many
real tokens, examples, masked positions). Computing it on a GPU means `nonzero` or `.item()`,
each of which stops the GPU until the host has the answer, once per forward and per layer. The
loader computes it on the CPU with this same function (pretrain/data/masking.py) and the model
uses the tensors as they are; a caller that gives no layout (fine-tuning, HF comparisons, tests)
gets it computed here on its own device, with those syncs.

Fields (flat indices are into the row-major [B*L] positions):
  position_ids   [B, L] int64  0 at each example's first token; pads continue their row's last
                               example, so a one-example row is 0..L-1 (the default positions)
  cu_seqlens     [N+1] int32   example boundaries in the list of real tokens (FlashAttention's
                               varlen layout), examples in row-major order
  max_seqlen     int           the longest example (a Python int: FlashAttention's argument)
  token_index    [T] int64     flat indices of the real tokens
  example_starts [N] int64     flat indices of each example's first token
  masked_index   [M] int64     flat indices of the positions with a label (labels != -100)
"""
from __future__ import annotations

from typing import Optional

import torch

LAYOUT_KEYS = ("cu_seqlens", "max_seqlen", "token_index", "example_starts", "masked_index")
IGNORE_INDEX = -100


def default_positions(input_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] positions 0..L-1 of rows that hold one example each."""
    b, l = input_ids.shape[:2]
    return torch.arange(l, device=input_ids.device).expand(b, l)


def example_starts_mask(valid: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the first token of every example (position 0, or a row's first real token)."""
    first_real = valid & (torch.cumsum(valid.long(), dim=1) == 1)
    return ((positions == 0) & valid) | first_real


def batch_layout(attention_mask: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                 labels: Optional[torch.Tensor] = None) -> dict:
    """The layout fields (module docstring) of [B, L] rows; `masked_index` only with labels.

    On CPU tensors this makes no device sync (the loader's case); on a GPU it syncs."""
    valid = attention_mask.bool()
    positions = default_positions(valid) if position_ids is None else position_ids
    flat_valid = valid.reshape(-1)
    token_index = flat_valid.nonzero().squeeze(1)
    example_starts = example_starts_mask(valid, positions).reshape(-1).nonzero().squeeze(1)
    token_rank = torch.cumsum(flat_valid.long(), 0) - 1          # flat position -> index among real tokens
    bounds = torch.cat([token_rank.index_select(0, example_starts),
                        torch.tensor([token_index.numel()], device=valid.device)])
    lengths = bounds[1:] - bounds[:-1]
    out = {
        "cu_seqlens": bounds.to(torch.int32),
        "max_seqlen": int(lengths.max()) if lengths.numel() else 0,
        "token_index": token_index,
        "example_starts": example_starts,
    }
    if labels is not None:
        out["masked_index"] = (labels.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)
    return out


def is_packed(example_starts: torch.Tensor, rows: int) -> bool:
    """Whether some row holds several examples: a host-side shape check (every row holds at
    least one example, so N > B exactly when one holds more)."""
    return example_starts.shape[0] > rows


def batch_examples(batch: dict) -> int:
    """How many examples a (CPU) batch holds: its layout's, else one per row."""
    cu = batch.get("cu_seqlens")
    return int(cu.numel()) - 1 if cu is not None else int(batch["input_ids"].shape[0])
