"""An objective defined outside the package (tests/launch/parity_objective.py: its own head, metric
and loss) trains, logs, evaluates and resumes at world size 2 through pretrain-launch, with no
change to the engine, the loop or the tracker."""
from __future__ import annotations

import json
import os

from launch_helpers import launch, losses, metrics, run_env

HERE = os.path.dirname(os.path.abspath(__file__))
ARGS = ("objective=mlm", "objective.name=parity_objective:MaskedLMWithParity", "cluster.nproc=2",
        "trainer.checkpoint_every=3", "trainer.eval_every=3", "trainer.eval_batches=2", "schedule.total_steps=6")


def test_an_objective_from_outside_trains_evaluates_and_resumes_exactly_at_world_two(tmp_path, tiny_data):
    env = run_env()
    env["PYTHONPATH"] = os.pathsep.join([HERE, env.get("PYTHONPATH", "")])
    root = str(tmp_path / "runs")
    whole = launch(root, tiny_data, "whole", *ARGS, "trainer.max_steps=6", env=env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = launch(root, tiny_data, "split", *ARGS, "trainer.max_steps=3", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    second = launch(root, tiny_data, "split", *ARGS, "trainer.max_steps=6", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from step 3" in second.stdout
    # The run resumed exactly: its head's weights and optimizer state came back with the model's.
    a, b = losses(os.path.join(root, "whole")), losses(os.path.join(root, "split"))
    assert sorted(a) == sorted(b) == list(range(1, 7)) and a == b, (a, b)
    logged = metrics(os.path.join(root, "whole"))
    train = [m for m in logged if "train/loss" in m]
    assert all(0.0 <= m["train/parity_acc"] <= 1.0 and m["train/parity_loss"] > 0 for m in train)
    evals = [m for m in logged if "eval/loss" in m]
    assert len(evals) == 2 and all("eval/parity_acc" in m and "eval/mlm_acc" in m for m in evals)
    assert all(m["eval/loss"] == m["eval/mlm_loss"] + m["eval/parity_loss"] for m in evals)
    described = json.load(open(os.path.join(root, "whole", "objective.json")))
    assert described["name"] == "mlm_parity" and "parity_acc" in described["metrics"]
    assert "parity_acc=" in whole.stdout     # the eval log line shows what the objective says
