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

    # The growth is real: one step after it, the new layer 1 is still its copy of layer 0 (up to
    # that one step's two different updates), where a layer left at its initial weights would
    # differ by more than its own size.
    grown = launch(root, tiny_data, "grown", *STACK, "trainer.max_steps=6", "trainer.export_on_finish=true")
    assert grown.returncode == 0, grown.stderr[-3000:]
    from safetensors.torch import load_file

    weights = load_file(os.path.join(root, "grown", "export", "model.safetensors"))
    layer0 = {k[len("bert.encoder.layer.0."):]: v for k, v in weights.items()
              if k.startswith("bert.encoder.layer.0.") and v.dim() == 2}   # matrices: biases start at 0
    assert len(layer0) == 6
    for name, w0 in layer0.items():
        w1 = weights["bert.encoder.layer.1." + name]
        assert float((w1 - w0).norm() / w0.norm()) < 0.1, name
