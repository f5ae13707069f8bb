"""End-to-end launches: every ZeRO stage trains, eval + export produce a model transformers loads."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from launch_helpers import launch, losses, metrics, run_env


@pytest.mark.parametrize("stage, precision", [(0, "fp32"), (1, "bf16"), (3, "bf16")])
def test_zero_stage_trains_evaluates_and_exports(tmp_path, tiny_data, stage, precision):
    root = str(tmp_path / "runs")
    export = stage == 3  # consolidating ZeRO-3 shards is the hard case; once is enough
    tracker = "wandb" if stage == 1 else "default"  # wandb with no key and no WANDB_MODE: offline
    result = launch(
        root, tiny_data, "z", "cluster.nproc=2", f"parallel.zero_stage={stage}", f"precision={precision}",
        "trainer.max_steps=12", "trainer.eval_every=6", "trainer.eval_batches=4", "trainer.checkpoint_every=6",
        f"tracker={tracker}", f"trainer.export_on_finish={str(export).lower()}",
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
    if tracker == "wandb":
        assert [d for d in os.listdir(os.path.join(run_dir, "wandb")) if d.startswith("offline-run-")]
    if export:
        _check_export(os.path.join(run_dir, "export"))
    if stage == 0:  # the CLI, on a finished run that did not export itself
        out = os.path.join(str(tmp_path), "exported")
        cli = subprocess.run([sys.executable, "-m", "launch.export", run_dir, out], capture_output=True, text=True,
                             timeout=300, env=run_env())
        assert cli.returncode == 0, cli.stderr[-2000:]
        _check_export(out)
        bad = subprocess.run([sys.executable, "-m", "launch.export", str(tmp_path / "nope"), out],
                             capture_output=True, text=True, timeout=300, env=run_env())
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


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
