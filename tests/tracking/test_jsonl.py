"""JSONL tracker: content, resume truncation (streamed), fresh-start hygiene, rank gating, config."""
import json

import pytest
import torch

from pretrain.tracking import NullTracker, TrackerConfig, build_tracker
from pretrain.tracking.jsonl import truncate_after

JSONL_ONLY = {"backends": ["jsonl"]}


def strict(token):
    raise ValueError(f"not JSON: {token}")


def read(path):
    """Strict JSON, as jq / JavaScript / pandas read it: NaN or Infinity would raise."""
    return [json.loads(line, parse_constant=strict) for line in path.read_text().splitlines()]


def test_jsonl_content_and_monotonic_steps(tmp_path):
    t = build_tracker(JSONL_ONLY, tmp_path, "r", {"a": 1})
    t.log({"train/loss": torch.tensor(2.5), "train/lr": 1e-4}, step=1)
    t.log({"eval/mlm_acc": 0.25}, step=1)             # same step again: fine (train + eval)
    t.log({"train/loss": float("nan"), "train/grad_norm": torch.tensor(float("-inf")),
           "train/lr": 1e-4, "nonfinite": 5}, step=2)  # a diverged loss stays visible, as null + flag
    t.log({"train/loss": 1.0}, step=1)                 # backwards: dropped
    t.log_text("train/note", "hello", step=3)
    assert t.state() == {"wandb_run_id": None, "last_step": 3}
    t.close()
    t.close()  # idempotent
    recs = read(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 1, 2, 3]
    assert recs[0]["train/loss"] == 2.5 and recs[0]["train/lr"] == 1e-4
    assert all(isinstance(r["time"], float) and r["time"] > 1.6e9 for r in recs)
    assert recs[1] == {"step": 1, "time": recs[1]["time"], "eval/mlm_acc": 0.25}
    assert recs[2] == {"step": 2, "time": recs[2]["time"], "train/loss": None, "train/grad_norm": None,
                       "train/lr": 1e-4, "nonfinite": {"train/loss": "nan", "train/grad_norm": "-inf"}}
    assert recs[3]["train/note"] == "hello"
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "wandb").exists()


def test_summary_and_resume_keep_the_file_strict_json(tmp_path):
    t = build_tracker(JSONL_ONLY, tmp_path, "r", None)
    t.log({"train/loss": float("inf")}, step=1)
    t.summary({"final/loss": float("nan"), "final/step": 1})
    t.close()
    assert json.loads((tmp_path / "summary.json").read_text(), parse_constant=strict) == {
        "final/loss": None, "final/step": 1, "nonfinite": {"final/loss": "nan"}}
    t = build_tracker(JSONL_ONLY, tmp_path, "r", None, resume_state={"last_step": 1})  # null lines survive resume
    t.close()
    assert read(tmp_path / "metrics.jsonl")[0]["nonfinite"] == {"train/loss": "inf"}


def test_resume_drops_lines_after_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with open(path, "w") as f:
        for s in range(11):
            f.write(json.dumps({"step": s, "time": 0, "train/loss": float(s)}) + "\n")
        f.write('{"step": 11, "train/lo')          # torn by the crash
    t = build_tracker(JSONL_ONLY, tmp_path, "r", None, resume_state={"wandb_run_id": None, "last_step": 5})
    assert t.state()["last_step"] == 5
    t.log({"train/loss": -6.0}, step=6)
    t.close()
    recs = read(path)
    assert [r["step"] for r in recs] == [0, 1, 2, 3, 4, 5, 6]
    assert recs[-1]["train/loss"] == -6.0
    assert not list(tmp_path.glob("*.rewrite"))


def test_resume_step_key_wins_and_nothing_to_drop_keeps_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(4)))
    before = path.stat().st_ino
    assert truncate_after(path, 10) == (4, 0)
    assert path.stat().st_ino == before  # untouched
    t = build_tracker(JSONL_ONLY, tmp_path, "r", None, resume_state={"last_step": 1, "step": 2})
    t.close()
    assert [r["step"] for r in read(path)] == [0, 1, 2]


def test_fresh_start_sets_old_file_aside(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 7}) + "\n")
    t = build_tracker(JSONL_ONLY, tmp_path, "r", None)
    t.log({"train/loss": 1.0}, step=0)
    t.close()
    assert [r["step"] for r in read(tmp_path / "metrics.jsonl")] == [0]
    assert len(list(tmp_path.glob("metrics.jsonl.stale-*"))) == 1


def test_non_main_rank_is_noop(tmp_path):
    t = build_tracker({"backends": ["jsonl", "tensorboard", "wandb"]}, tmp_path / "r", "r", {}, is_main=False)
    assert isinstance(t, NullTracker)
    t.log({"train/loss": 1.0}, step=0)
    t.summary({"x": 1})
    t.close()
    assert t.state() == {}
    assert not (tmp_path / "r").exists()


def test_summary_file(tmp_path):
    t = build_tracker(JSONL_ONLY, tmp_path, "r", None)
    t.summary({"best/eval_mlm_acc": 0.5})
    t.summary({"final/step": 10})
    t.close()
    assert json.loads((tmp_path / "summary.json").read_text()) == {"best/eval_mlm_acc": 0.5, "final/step": 10}


@pytest.mark.parametrize("bad, needle", [
    ({"backends": ["jsonl", "mlflow"]}, "tracker.backends"),
    ({"wandb_mode": "sometimes"}, "tracker.wandb_mode"),
    ({"log_every": 10}, "tracker.log_every"),
])
def test_config_errors_are_one_line(bad, needle):
    with pytest.raises(ValueError) as e:
        TrackerConfig.from_any(bad)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_presets_load():
    from pathlib import Path
    from omegaconf import OmegaConf
    conf = Path(__file__).resolve().parents[2] / "conf" / "tracker"
    got = {p.stem: TrackerConfig.from_any(OmegaConf.load(p)).backends for p in conf.glob("*.yaml")}
    assert got == {"default": ["jsonl", "tensorboard"], "wandb": ["jsonl", "tensorboard", "wandb"], "none": ["jsonl"]}
