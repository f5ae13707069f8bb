"""Progressive stacking: the encoder grows on schedule, a resume across the growth step is exact,
the export has the depth reached."""
from __future__ import annotations

import json
import os

from launch_helpers import launch, losses

STACK = ["cluster.nproc=2", "parallel=zero2", "trainer.stacking.layers=[1,2]", "trainer.stacking.steps=[5]",
         "schedule.total_steps=10", "trainer.checkpoint_every=4", "objective=mlm", "model.sentence_head=none"]


def test_stacking_grows_on_schedule_and_resumes_exactly_across_the_growth(tmp_path, tiny_data):
    root = str(tmp_path / "runs")
    ref = launch(root, tiny_data, "ref", *STACK, "trainer.max_steps=10", "trainer.export_on_finish=true")
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "stacking: 1 -> 2 layers at step 5" in ref.stdout
    reference = losses(os.path.join(root, "ref"))
    assert sorted(reference) == list(range(1, 11))
    config = json.load(open(os.path.join(root, "ref", "export", "config.json")))
    assert config["num_hidden_layers"] == 2

    # Stop before the growth (a checkpoint at step 4), then go on: the resumed run grows at step
    # 5 from the checkpoint's weights and continues bit for bit.
    first = launch(root, tiny_data, "split", *STACK, "trainer.max_steps=4", "trainer.export_on_finish=true")
    assert first.returncode == 0, first.stderr[-3000:]
    early = json.load(open(os.path.join(root, "split", "export", "config.json")))
    assert early["num_hidden_layers"] == 1   # the export has the depth reached
    again = launch(root, tiny_data, "split", *STACK, "trainer.max_steps=10")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step 4" in again.stdout and "stacking: 1 -> 2 layers at step 5" in again.stdout
    assert losses(os.path.join(root, "split")) == reference

    # The full depth from the start trains differently (the growth is real).
    full = launch(root, tiny_data, "full", *[o for o in STACK if "stacking" not in o], "trainer.max_steps=6")
    assert full.returncode == 0, full.stderr[-3000:]
    assert losses(os.path.join(root, "full"))[6] != reference[6]
