"""Objectives through pretrain-launch at world size 2, with no change to the engine, the loop or the
tracker: one defined outside the package (tests/launch/parity_objective.py: its own head, metric
and loss) and ELECTRA (bf16, ZeRO-2, gradient checkpointing; a generator of its own sharing the
embeddings; replacements drawn with the loader's per-example uniforms, so a resumed run samples the
same ones) train, log, evaluate and resume exactly (the losses of a run stopped at step 3 and
relaunched equal an uninterrupted run's)."""
from __future__ import annotations

import json
import os

import pytest

from launch_helpers import launch, losses, metrics, run_env

HERE = os.path.dirname(os.path.abspath(__file__))
COMMON = ("cluster.nproc=2", "trainer.checkpoint_every=3", "trainer.eval_every=3", "trainer.eval_batches=2",
          "schedule.total_steps=6")
CASES = {
    "parity": (("objective=mlm", "objective.name=parity_objective:MaskedLMWithParity"), "mlm_parity",
               ("parity_loss", "parity_acc", "mlm_acc"), ("mlm_loss", "parity_loss")),
    "electra": (("objective=electra", "parallel=zero2", "precision=bf16", "model.gradient_checkpointing=true"), "electra",
                # (disc_precision is left out of a record while the discriminator predicts no replacement)
                ("disc_acc", "disc_recall", "replaced_fraction", "mlm_acc"), ("mlm_loss", "disc_loss")),
}


@pytest.mark.parametrize("case", CASES)
def test_objective_trains_evaluates_and_resumes_exactly_at_world_two(tmp_path, tiny_data, case):
    args, name, metric_names, eval_losses = CASES[case]
    env = run_env()
    env["PYTHONPATH"] = os.pathsep.join([HERE, env.get("PYTHONPATH", "")])
    root = str(tmp_path / "runs")
    whole = launch(root, tiny_data, "whole", *COMMON, *args, "trainer.max_steps=6", env=env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = launch(root, tiny_data, "split", *COMMON, *args, "trainer.max_steps=3", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    second = launch(root, tiny_data, "split", *COMMON, *args, "trainer.max_steps=6", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from step 3" in second.stdout
    # Exact: the objective's own modules and optimizer state came back with the model's (and for
    # ELECTRA the same tokens were sampled after the relaunch).
    a, b = losses(os.path.join(root, "whole")), losses(os.path.join(root, "split"))
    assert sorted(a) == sorted(b) == list(range(1, 7)) and a == b, (a, b)
    logged = metrics(os.path.join(root, "whole"))
    train = [m for m in logged if "train/loss" in m]
    assert all(f"train/{m}" in rec for rec in train for m in metric_names), train[-1]
    evals = [m for m in logged if "eval/loss" in m]
    assert len(evals) == 2 and all(f"eval/{m}" in rec for rec in evals for m in metric_names)
    assert all(rec["eval/loss"] == pytest.approx(sum(rec[f"eval/{m}"] for m in eval_losses)) for rec in evals)
    described = json.load(open(os.path.join(root, "whole", "objective.json")))
    assert described["name"] == name and set(metric_names) <= set(described["metrics"])
    assert f"{described['shown'][0]}=" in whole.stdout    # the eval log line shows what the objective says
