"""pretraining_loss: normalisation by the caller's count, fp32 CE, metric sums."""
import torch

from helpers_model import run, tiny_batch, tiny_cfg
from pretrain.data.config import ObjectiveConfig
from pretrain.model import build_model
from pretrain.model.heads import PretrainingOutput
from pretrain.objectives import STAT_KEYS, pretraining_loss


def test_mlm_loss_is_sum_over_global_count_and_stats_are_sums():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 2, 2])
    out = PretrainingOutput(logits, labels, torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 0.0]]))
    batch = {"sentence_label": torch.tensor([0, 0, -100])}
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    s_ce = torch.nn.functional.cross_entropy(out.sentence_logits[:2], torch.tensor([0, 0]), reduction="none")
    cfg = ObjectiveConfig(mlm_weight=1.0, sentence_weight=0.5)
    loss, stats = pretraining_loss(out, batch, 12.0, cfg)  # e.g. 12 masked tokens across all ranks
    torch.testing.assert_close(loss, ce.sum() / 12 + 0.5 * s_ce.mean())
    # 0-dim device tensors: the engine reads them once per step, never per micro-batch.
    assert set(stats) == set(STAT_KEYS)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and v.dtype == torch.float64 for v in stats.values())
    assert stats["mlm_count"] == 3 and stats["mlm_correct"] == 2  # rows 0 and 2 right, row 1 wrong
    assert abs(stats["mlm_loss_sum"] - ce.sum().item()) < 1e-6
    assert stats["sentence_count"] == 2 and stats["sentence_correct"] == 1
    assert abs(stats["sentence_loss_sum"] - s_ce.sum().item()) < 1e-6


def test_split_batches_add_up_to_the_whole():
    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    batch = tiny_batch(cfg, batch=4, seq=12)
    total = int((batch["labels"] != -100).sum())
    whole, whole_stats = pretraining_loss(run(model, batch), batch, total, ObjectiveConfig(sentence_weight=0.0))
    parts, summed = 0.0, dict.fromkeys(whole_stats, 0.0)
    for sl in (slice(0, 1), slice(1, 4)):
        half = {k: v[sl] for k, v in batch.items()}
        loss, stats = pretraining_loss(run(model, half), half, total, ObjectiveConfig(sentence_weight=0.0))
        parts += loss
        summed = {k: summed[k] + stats[k] for k in summed}
    torch.testing.assert_close(parts, whole)
    for k in summed:
        assert abs(summed[k] - whole_stats[k]) < 1e-4, k


def test_loss_is_fp32_under_bf16_autocast():
    cfg = tiny_cfg()
    model = build_model(cfg)
    batch = tiny_batch(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(model, batch)
        loss, _ = pretraining_loss(out, batch, 10, ObjectiveConfig())
    assert out.mlm_logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()


def test_no_sentence_task_and_no_masked_tokens():
    out = PretrainingOutput(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), None)
    loss, stats = pretraining_loss(out, {}, 0, ObjectiveConfig(sentence_task="none"))
    assert loss.item() == 0.0 and stats["mlm_count"] == 0 and stats["sentence_count"] == 0
