"""The model's forward, the pretraining loss and the backward read no device value on the host
(on a GPU each such read stalls the device until the host catches up). Checked on CPU by
recording every torch call that would be a device-to-host read."""
import pytest
import torch
from torch.overrides import TorchFunctionMode

from helpers_model import example_ids, modern_cfg, packed_batch, tiny_batch, tiny_cfg
from pretrain.data.config import ObjectiveConfig
from pretrain.model import build_model
from pretrain.model.layout import batch_layout
from pretrain.objectives import pretraining_loss

HOST_READS = {"item", "tolist", "nonzero", "masked_select", "__bool__", "__int__", "__float__", "__index__",
              "cpu", "numpy", "argwhere", "unique", "repeat_interleave", "any", "all"}


class HostReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in HOST_READS:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def loader_like(batch: dict) -> dict:
    """What the loader hands the engine: the layout fields computed on the host (CPU, no sync)."""
    return {**batch, **batch_layout(batch["attention_mask"], batch.get("position_ids"), batch["labels"])}


@pytest.mark.parametrize("arch, head, packed", [("bert", "sop", False), ("bert", "none", False),
                                                ("bert", "sop", True), ("modernbert", "none", True),
                                                ("modernbert", "sop", False), ("modernbert", "nsp", True)])
def test_a_training_step_reads_nothing_back_from_the_device(arch, head, packed):
    cfg = (modern_cfg if arch == "modernbert" else tiny_cfg)(sentence_head=head, unpad=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.set_packed_rows(packed)
    if packed:
        batch = packed_batch(cfg, [example_ids(cfg, [5, 6]), example_ids(cfg, [9], seed=1)], seq=12)
    else:
        batch = tiny_batch(cfg)
    batch = loader_like(batch)
    objective = ObjectiveConfig(sentence_task=head)
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask", "labels", "position_ids",
                                     "cu_seqlens", "max_seqlen", "token_index", "example_starts", "masked_index")
              if k in batch}
    mlm_norm = torch.tensor(7.0)
    with HostReads() as reads:
        out = model(**inputs)
        loss, stats = pretraining_loss(out, batch, mlm_norm, objective, sentence_normalizer=torch.tensor(3.0))
        loss.backward()
    assert reads.seen == [], f"host reads in a training step: {sorted(set(reads.seen))}"
    assert all(isinstance(v, torch.Tensor) or isinstance(v, float) for v in stats.values())
