"""Pipeline parallelism through `pretrain-launch`: crash and resume, layout changes, export.

One run directory goes through 2 stages (bf16, activation checkpointing) -> the plain engine ->
2 stages again, with the sample audit on; a second run is killed (-9) and relaunched. Launches
are slow, so each one is checked for several things.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from launch_helpers import kill_tree, latest, launch, losses, metrics, start, wait_for

PIPE = ["cluster.nproc=2", "parallel=pipeline", "precision=bf16", "trainer.grad_accum=4",
        "model.gradient_checkpointing=true", "trainer.checkpoint_every=4", "trainer.keep_checkpoints=6",
        "trainer.record_samples=true", "trainer.eval_every=8", "trainer.eval_batches=4"]
PLAIN = ["cluster.nproc=2", "parallel=zero1", "precision=bf16", "trainer.grad_accum=2",
         "trainer.checkpoint_every=4", "trainer.keep_checkpoints=6", "trainer.record_samples=true",
         "trainer.eval_every=0"]


def _samples(run_dir: str) -> list[tuple]:
    seen = []
    for name in sorted(os.listdir(os.path.join(run_dir, "logs"))):
        if name.startswith("samples-rank"):
            with open(os.path.join(run_dir, "logs", name)) as f:
                seen += [tuple(json.loads(line)) for line in f]
    return seen


def test_pipeline_run_survives_kill9_changes_layout_both_ways_and_exports(tmp_path, tiny_data):
    root = str(tmp_path / "runs")
    ref_dir, crash_dir = os.path.join(root, "ref"), os.path.join(root, "crash")

    # 1. 2 stages x 1 replica, bf16 + activation checkpointing: trains, evaluates, checkpoints.
    ref = launch(root, tiny_data, "ref", *PIPE, "trainer.max_steps=8")
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = losses(ref_dir)
    assert sorted(reference) == list(range(1, 9)) and reference[8] < reference[1] - 0.1
    train = [m for m in metrics(ref_dir) if "train/loss" in m]
    for key in ("train/mlm_acc", "train/sop_acc", "train/grad_norm", "train/lr", "train/tokens_per_s", "train/mfu",
                "train/fill"):
        assert all(key in m for m in train), key
    # one replica, 4 x 8 packed rows per step: consumed_samples counts the examples they hold
    assert all(m["train/consumed_samples"] > 32 * m["step"] for m in train)
    steps = [m["train/consumed_samples"] for m in train]
    assert steps == sorted(steps) and all(0.8 < m["train/fill"] <= 1.0 for m in train)
    last = train[-1]   # the sample log has one line per example, not per row
    assert len([r for r in _samples(ref_dir) if r[0] <= last["step"]]) == last["train/consumed_samples"]
    evals = [m for m in metrics(ref_dir) if "eval/mlm_acc" in m]
    assert [m["step"] for m in evals] == [8] and evals[0]["eval/masked_tokens"] > 0

    # 2. kill -9 mid-run, relaunch: the continuation equals the uninterrupted run exactly.
    proc = start(root, tiny_data, "crash", *PIPE, "trainer.max_steps=8")
    wait_for(lambda: latest(crash_dir) is not None, what="first checkpoint", proc=proc)
    kill_tree(proc)
    resumed_from = int(latest(crash_dir).split("_")[1])
    assert resumed_from < 8
    again = launch(root, tiny_data, "crash", *PIPE, "trainer.max_steps=8")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from step {resumed_from}" in again.stdout
    assert losses(crash_dir) == reference

    # 3. 2 stages -> 1 (the plain engine on 2 data-parallel ranks) -> 2 stages: the loss curve
    # continues and, over all three layouts, no example is trained on twice or skipped.
    plain = launch(root, tiny_data, "ref", *PLAIN, "trainer.max_steps=12")
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "resumed from step 8 (2 -> 2 ranks)" in plain.stdout
    back = launch(root, tiny_data, "ref", *PIPE, "trainer.max_steps=16")
    assert back.returncode == 0, back.stderr[-3000:]
    assert "resumed from step 12 (2 -> 2 ranks)" in back.stdout
    curve = losses(ref_dir)
    assert sorted(curve) == list(range(1, 17))
    for step in (9, 13):  # the first step after each layout change continues from the one before
        assert abs(curve[step] - curve[step - 1]) < 0.15 * curve[step - 1], (step, curve)
    assert max(curve[s] for s in range(9, 17)) < curve[1] - 0.1
    seen = _samples(ref_dir)
    examples = [(epoch, doc, ex) for _step, epoch, doc, ex in seen]
    assert len(examples) == len(set(examples)), "an example was trained on twice within the epoch"
    assert {step for step, *_ in seen} == set(range(1, 17))
    final = [m for m in metrics(ref_dir) if "train/consumed_samples" in m and m["step"] == 16][-1]
    assert len(seen) == final["train/consumed_samples"] > 16 * 32   # packed: more examples than rows

    # 4. Export of the final (pipeline, bf16 ZeRO-1) checkpoint with the CLI: transformers loads
    # it and its logits equal our model's on the consolidated fp32 weights.
    out = str(tmp_path / "exported")
    cli = subprocess.run([sys.executable, "-m", "launch.export", ref_dir, out], capture_output=True, text=True,
                         timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    _check_export_matches(os.path.join(ref_dir, "checkpoints", latest(ref_dir)), ref_dir, out)


def _check_export_matches(ckpt: str, run_dir: str, export_dir: str) -> None:
    from omegaconf import OmegaConf
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from pretrain.train.rundir import load_run_config
    from parallel.convert import consolidate_fp32
    from pretrain.model import ModelConfig, build_model

    assert json.load(open(os.path.join(ckpt, "parallel_meta.json")))["pipeline_stages"] == 2
    cfg = load_run_config(run_dir)
    mcfg = ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True))
    mcfg.gradient_checkpointing = False
    ours = build_model(mcfg).eval()
    ours.load_state_dict(consolidate_fp32(ckpt), strict=True)  # every plain name, the decoder included
    hf = AutoModelForMaskedLM.from_pretrained(export_dir).eval()
    tok = AutoTokenizer.from_pretrained(export_dir)
    enc = tok(["def f(x): return x + 1", "The module imports the class."], padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = hf(**enc).logits
        mine = ours(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], all_positions=True).mlm_logits
    assert (mine - theirs).abs().max() <= 1e-4
