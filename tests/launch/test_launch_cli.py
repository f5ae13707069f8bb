"""The launcher's user-facing behaviour: one-line errors, dry run, sweeps, fresh starts."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from launch_helpers import COMMON, run_env


def _launch(tmp_path, *args, data=None):
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, "-m", "launch.train", *flags, f"run.root={tmp_path}/runs", *COMMON, *overrides]
    if data:
        cmd.append(f"data.path={data}")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=run_env())


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run.name=x", "data.path=/no/such/dir"], "data.path"),
        (["run.name=x", "precision.dtype=fp8"], "precision.dtype"),
        (["run.name=x", "parallel.zero_stage=7"], "parallel.zero_stage"),
        (["run.name=x", "trainer.max_steps=-1"], "trainer.max_steps"),
        (["run.name=x", "data.micro_batch_size=abc"], "micro_batch_size"),
        (["run.name=x", "model.vocab_size=10"], "model.vocab_size"),
        (["data.path=/tmp"], "run.name"),
        (["run.name=x", "trainer.max_stepz=3"], "max_stepz"),
        (["run.name=x", "parallel=zero9"], "zero9"),
        (["run.name=x", "precision=fp16", "parallel=zero2"], "fp16"),
        (["run.name=x", "parallel.zero_stage=1", "parallel.offload_params=true"], "offload_params"),
        (["run.name=x", "objective.name=nosuch"], "objective.name='nosuch'"),
        (["run.name=x", "objective=mlm", "objective.name=mlm_sop"], "contradicts objective.name=mlm_sop"),
        (["run.name=x", "objective=mlm", "objective.name=parity_objective:MaskedLMWithParity", "parallel=pipeline",
          "parallel.pipeline_stages=2", "cluster.nproc=2"], "cannot split into stages"),
    ],
)
def test_bad_config_is_one_line_error(tmp_path, tiny_data, args, needle, monkeypatch, capsys):
    """In-process (the CLI's own entry point, as the console script calls it): config errors are
    found before any process starts, so a subprocess per case would only add start-up time."""
    import launch.train

    has_data = any(a.startswith("data.path=") for a in args)
    overrides = [*args, *([] if has_data else [f"data.path={tiny_data}"])]
    monkeypatch.setattr(sys, "argv", ["pretrain-launch", f"run.root={tmp_path}/runs", *COMMON, *overrides])
    with pytest.raises(SystemExit) as exit_:
        launch.train.main()
    assert exit_.value.code not in (0, None)
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert needle in lines[0] and "Traceback" not in stderr
    assert not os.path.exists(tmp_path / "runs" / "x" / "checkpoints")


def test_the_cli_process_reports_a_bad_config_in_one_line_and_exit_code_2(tmp_path):
    result = _launch(tmp_path, "run.name=x", "data.path=/no/such/dir")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pretrain-launch: error: config key 'data.path' = '/no/such/dir': no such directory (run pretrain-prepare first)"]


def test_dry_run_prints_config_and_command_and_starts_nothing(tmp_path, tiny_data):
    result = _launch(tmp_path, "run.name=d", "run.dry_run=true", "cluster.nproc=2", data=tiny_data)
    assert result.returncode == 0, result.stderr
    assert "zero_stage" in result.stdout and "torch.distributed.run" in result.stdout
    assert "--nproc-per-node=2" in result.stdout
    assert not os.path.exists(tmp_path / "runs" / "d")


def test_multirun_sweep_makes_one_run_per_value(tmp_path, tiny_data):
    result = _launch(tmp_path, "-m", "run.name=sw", "optim.lr=1e-4,1e-3", "trainer.max_steps=2",
                     "cluster.nproc=1", "parallel=single", data=tiny_data)
    assert result.returncode == 0, result.stderr[-3000:]
    for num, lr in ((0, 1e-4), (1, 1e-3)):
        run_dir = tmp_path / "runs" / f"sw-{num}"
        assert (run_dir / "metrics.jsonl").exists()
        assert f"lr: {lr}" in (run_dir / "config.yaml").read_text()
    status = subprocess.run([sys.executable, "-m", "launch.status", str(tmp_path / "runs" / "sw-0")],
                            capture_output=True, text=True, timeout=120, env=run_env())
    assert status.returncode == 0, status.stderr
    for needle in ("cluster=local, 1 node(s) x 1 process(es)", "finished at step 2 (max_steps=2)",
                   "checkpoint  step 2", "last logged step 2: train/loss="):
        assert needle in status.stdout, (needle, status.stdout)
    assert "job" not in status.stdout  # a local run has no SLURM jobs
    bad = subprocess.run([sys.executable, "-m", "launch.status", str(tmp_path / "nope")], capture_output=True,
                         text=True, timeout=120, env=run_env())
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "config.yaml" in bad.stderr


def test_other_model_shape_is_refused_then_fresh_moves_the_old_run_aside(tmp_path, tiny_data):
    args = ("run.name=f", "trainer.max_steps=2", "cluster.nproc=1", "trainer.checkpoint_every=1")
    assert _launch(tmp_path, *args, data=tiny_data).returncode == 0
    other = _launch(tmp_path, *args, "model.hidden_size=64", "trainer.max_steps=3", data=tiny_data)
    assert other.returncode != 0
    lines = [line for line in other.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "model shape differs" in lines[0], other.stderr
    result = _launch(tmp_path, *args, "run.fresh=true", data=tiny_data)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed" not in result.stdout
    assert any(p.startswith("f.old-") for p in os.listdir(tmp_path / "runs"))


def test_continued_pretraining_from_an_export_checks_the_tokenizer(tmp_path, tiny_data):
    import shutil

    from pretrain.hf.export import export_hf
    from pretrain.model import ModelConfig, build_model
    from pretrain.shardformat import load_manifest

    manifest = load_manifest(tiny_data)
    cfg = ModelConfig(vocab_size=manifest.vocab_size, hidden_size=128, num_layers=2, num_heads=2,
                      intermediate_size=512, max_position_embeddings=512)
    export = tmp_path / "hf"
    export_hf(build_model(cfg), cfg, manifest.tokenizer_file, str(export))
    ok = _launch(tmp_path, "run.name=c", f"model.init_from={export}", "trainer.max_steps=2", "cluster.nproc=1",
                 data=tiny_data)
    assert ok.returncode == 0, ok.stderr[-2000:]

    other = tmp_path / "other"
    shutil.copytree(export, other)
    import json
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[10:12]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # same size, different ids
    (other / "tokenizer.json").write_text(json.dumps(tok))
    bad = _launch(tmp_path, "run.name=c2", f"model.init_from={other}", "trainer.max_steps=2", "cluster.nproc=1",
                  data=tiny_data)
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and "tokenizer" in lines[0], bad.stderr
