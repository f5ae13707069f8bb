"""End-to-end launches: every ZeRO stage trains, eval + export produce a model transformers loads."""
from __future__ import annotations

import os

import pytest

from conftest import launch, losses, metrics


@pytest.mark.parametrize("stage, precision", [(0, "fp32"), (1, "bf16"), (3, "bf16")])
def test_zero_stage_trains_evaluates_and_exports(tmp_path, tiny_data, stage, precision):
    root = str(tmp_path / "runs")
    export = stage == 3  # consolidating ZeRO-3 shards is the hard case; once is enough
    result = launch(
        root, tiny_data, "z", "cluster.nproc=2", f"parallel.zero_stage={stage}", f"precision={precision}",
        "trainer.max_steps=12", "trainer.eval_every=6", "trainer.eval_batches=4", "trainer.checkpoint_every=6",
        "tracker=default", f"trainer.export_on_finish={str(export).lower()}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = os.path.join(root, "z")
    curve = losses(run_dir)
    assert sorted(curve) == list(range(1, 13))
    assert sum(curve[s] for s in (10, 11, 12)) < sum(curve[s] for s in (1, 2, 3)), curve
    rows = metrics(run_dir)
    evals = [m for m in rows if "eval/mlm_acc" in m]
    assert [m["step"] for m in evals] == [6, 12]
    assert 0.0 <= evals[-1]["eval/mlm_acc"] <= 1.0 and evals[-1]["eval/masked_tokens"] > 0
    train = [m for m in rows if "train/loss" in m]
    for key in ("train/mlm_acc", "train/sop_acc", "train/lr", "train/grad_norm", "train/tokens_per_s",
                "train/samples_per_s", "train/mfu", "train/data_wait", "train/peak_mem_gb"):
        assert key in train[-1], key
    # the total is the sum of its parts (MLM over the global batch + SOP mean over sequences)
    last = train[-1]
    assert last["train/loss"] == pytest.approx(last["train/mlm_loss"] + last["train/sop_loss"], rel=1e-4)
    assert os.listdir(os.path.join(run_dir, "tensorboard"))
    if export:
        _check_export(os.path.join(run_dir, "export"))


def _check_export(export_dir: str) -> None:
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    tok = AutoTokenizer.from_pretrained(export_dir)
    model = AutoModelForMaskedLM.from_pretrained(export_dir).eval()
    enc = tok("The return statement leaves the function.", return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape[-1] >= tok.vocab_size and torch.isfinite(logits).all()
    guesses = pipeline("fill-mask", model=model, tokenizer=tok)(f"The {tok.mask_token} statement.")
    assert len(guesses) == 5
