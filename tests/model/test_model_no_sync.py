"""With the loader's layout in the batch, a training forward + loss + backward never asks the
device for a value: no nonzero, item, tolist, masked_select, bool/int/float of a tensor (each
one stops a GPU until the host catches up). Checked by making those calls raise."""
import contextlib

import pytest
import torch

from helpers_model import example_ids, modern_cfg, packed_batch, tiny_batch, tiny_cfg
from pretrain.data.config import ObjectiveConfig
from pretrain.model import build_model
from pretrain.model.layout import LAYOUT_KEYS, batch_layout
from pretrain.objectives import pretraining_loss

SYNCING = [(torch.Tensor, "nonzero"), (torch, "nonzero"), (torch.Tensor, "item"), (torch.Tensor, "tolist"),
           (torch.Tensor, "masked_select"), (torch, "masked_select"), (torch.Tensor, "__bool__"),
           (torch.Tensor, "__int__"), (torch.Tensor, "__float__"), (torch.Tensor, "__index__")]


@contextlib.contextmanager
def host_syncs_forbidden():
    saved = [(owner, name, getattr(owner, name)) for owner, name in SYNCING]

    def forbid(name):
        def call(*args, **kwargs):
            raise AssertionError(f"host sync: {name} called during a training step")
        return call

    try:
        for owner, name, _ in saved:
            setattr(owner, name, forbid(name))
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def cfg_for(arch, attention):
    """attention: padded | unpadded (masked SDPA on re-padded rows) | varlen (nested SDPA)."""
    kw = dict(unpad=attention != "padded", attention_backend="varlen" if attention == "varlen" else "sdpa")
    if arch == "modernbert":
        return modern_cfg(sentence_head="sop", **kw)
    return tiny_cfg(arch, hidden_dropout=0.0, attention_dropout=0.0, **kw)


def batch_for(cfg, packed: bool) -> dict:
    if packed:
        exs = example_ids(cfg, [5, 7, 3, 9, 6, 16])
        batch = packed_batch(cfg, [exs[:3], exs[3:5], exs[5:]], 16)
        starts = batch["position_ids"] == 0
        batch["sentence_label"] = batch["sentence_label"][starts & batch["attention_mask"].bool()]
    else:
        batch = tiny_batch(cfg, seq=16)
        batch["position_ids"] = torch.arange(16).expand(3, 16).contiguous()
    batch.update(batch_layout(batch["attention_mask"], batch["position_ids"], batch["labels"]))
    return batch


def step(model, batch, cfg_obj):
    keys = ("input_ids", "token_type_ids", "attention_mask", "labels", "position_ids") + LAYOUT_KEYS
    out = model(**{k: batch[k] for k in keys if k in batch})
    loss, stats = pretraining_loss(out, batch, 7.0, cfg_obj, sentence_normalizer=torch.tensor(3.0))
    loss.backward()
    return out, loss, stats


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("attention", ["padded", "unpadded", "varlen"])
@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_training_step_makes_no_host_sync_and_matches_the_computed_layout(arch, attention, packed):
    cfg = cfg_for(arch, attention)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = batch_for(cfg, packed)
    with host_syncs_forbidden():
        out, loss, stats = step(model, batch, ObjectiveConfig())
    assert set(stats) >= {"mlm_count", "sentence_count"}
    # The same batch without the layout (computed by the model itself) gives the same result.
    model.zero_grad()
    plain = {k: v for k, v in batch.items() if k not in LAYOUT_KEYS}
    if not packed:
        plain.pop("position_ids")
    ref, ref_loss, _ = step(model, plain, ObjectiveConfig())
    torch.testing.assert_close(out.mlm_logits, ref.mlm_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.sentence_logits, ref.sentence_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss, ref_loss)
    assert (out.sentence_index is not None) == packed


def test_the_guard_catches_a_sync():
    """The patch is real: a nonzero inside it raises (so the test above can fail)."""
    with host_syncs_forbidden(), pytest.raises(AssertionError, match="host sync"):
        torch.tensor([0, 1]).nonzero()
