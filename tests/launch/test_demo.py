"""`make demo` sizes its model to the machine: the plan from probed step times (fake probes here)."""
import json
import os

import pytest

from launch import demo

BIG, SMALL = demo.CANDIDATES[0].preset, demo.CANDIDATES[-1].preset


def probe_of(seconds: dict):
    calls = []

    def probe(candidate, dtype):
        calls.append((candidate.preset, dtype))
        return seconds[candidate.preset]
    return probe, calls


def test_a_fast_machine_trains_the_largest_candidate_for_the_steps_that_fit():
    mini = 240 / demo.STEP_OVERHEAD / 1500  # 1500 steps of the larger candidate fit
    probe, calls = probe_of({BIG: mini, SMALL: mini / 3})
    plan = demo.plan(240, "bf16", probe)
    assert plan.candidate.preset == BIG and calls == [(BIG, "bf16")]  # no further probing
    assert plan.steps == int(240 / (mini * demo.STEP_OVERHEAD)) and plan.steps >= plan.candidate.min_steps
    assert plan.max_time == 240


def test_a_slow_machine_falls_back_to_the_smaller_candidate():
    probe, calls = probe_of({BIG: 0.5, SMALL: 0.2})  # e.g. a 2-core CPU
    plan = demo.plan(240, "fp32", probe)
    assert plan.candidate.preset == SMALL and [c for c, _ in calls] == [BIG, SMALL]
    assert plan.steps >= plan.candidate.min_steps


def test_a_very_slow_machine_says_so_and_stretches_the_budget_up_to_the_cap():
    tiny = 270 / demo.STEP_OVERHEAD / 300  # 300 steps take 270 s > 240 s
    probe, _ = probe_of({BIG: 5.0, SMALL: tiny})
    plan = demo.plan(240, "fp32", probe)
    assert plan.candidate is demo.CANDIDATES[-1] and plan.steps == plan.candidate.min_steps
    assert "slower than the demo is sized for" in plan.note
    assert plan.max_time == pytest.approx(270)
    probe, _ = probe_of({BIG: 5.0, SMALL: 2.0})
    assert demo.plan(240, "fp32", probe).max_time == demo.MAX_TIME_CAP


def test_the_step_cap_holds():
    probe, _ = probe_of({BIG: 0.001, SMALL: 0.001})
    assert demo.plan(240, "bf16", probe).steps == demo.MAX_STEPS


def test_candidates_are_presets_and_the_probe_runs_for_real():
    import conf

    for c in demo.CANDIDATES:
        assert os.path.isfile(os.path.join(os.path.dirname(conf.__file__), "model", f"{c.preset}.yaml"))
    assert demo.probe_step_seconds(demo.Candidate(SMALL, 2, 16, 1e-3, 1), "fp32", steps=1) > 0


def test_final_eval_reads_the_last_eval_record(tmp_path):
    lines = [{"step": 10, "train/loss": 7.0}, {"step": 10, "eval/mlm_acc": 0.1}, {"step": 20, "eval/mlm_acc": 0.25}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert demo.final_eval(str(tmp_path)) == {"step": 20, "eval/mlm_acc": 0.25}
    assert demo.final_eval(str(tmp_path / "none")) is None
