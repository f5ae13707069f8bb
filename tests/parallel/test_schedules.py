"""LR curves (multipliers of the peak lr) and their LambdaLR wiring."""
import math

import pytest
import torch

from parallel.config import ScheduleConfig
from parallel.schedules import LrMultiplier, build_scheduler


def curve(name, total=10, warmup=2, min_ratio=0.0, decay_fraction=0.1, **kw):
    f = LrMultiplier(ScheduleConfig(name=name, warmup_steps=warmup, min_lr_ratio=min_ratio,
                                    decay_fraction=decay_fraction, **kw), total)
    return [f(s) for s in range(total + 2)]


def test_warmup_then_linear():
    c = curve("linear", total=10, warmup=2, min_ratio=0.1)
    assert c[:2] == [0.5, 1.0]
    assert c[2] == 1.0
    assert c[6] == pytest.approx(1 - 0.9 * 4 / 8)
    assert c[10] == pytest.approx(0.1) and c[11] == pytest.approx(0.1)  # stays at the floor
    assert all(a >= b for a, b in zip(c[2:], c[3:]))


def test_cosine():
    c = curve("cosine", total=10, warmup=0, min_ratio=0.2)
    assert c[0] == 1.0
    assert c[5] == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert c[10] == pytest.approx(0.2)


def test_constant_and_warmup_fraction():
    c = curve("constant", total=10, warmup=0, warmup_fraction=0.3)
    assert c[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and set(c[3:]) == {1.0}


def test_wsd_stable_then_decay():
    c = curve("wsd", total=20, warmup=2, min_ratio=0.0, decay_fraction=0.25)
    assert c[1] == 1.0 and set(c[2:15]) == {1.0}
    assert c[15] == 1.0 and c[16] == pytest.approx(0.8) and c[20] == pytest.approx(0.0)


def test_schedule_total_steps_override_and_errors():
    f = LrMultiplier(ScheduleConfig(name="linear", total_steps=4), total_steps=100)
    assert f(2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="schedule.name"):
        LrMultiplier(ScheduleConfig(name="poly"), 10)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        LrMultiplier(ScheduleConfig(min_lr_ratio=2.0), 10)


def test_lambdalr_steps_and_state_roundtrip():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = build_scheduler(opt, ScheduleConfig(name="linear", warmup_steps=2), 6)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 2.0, 2.0, 1.5])
    opt2 = torch.optim.SGD([p], lr=2.0)
    sched2 = build_scheduler(opt2, ScheduleConfig(name="linear", warmup_steps=2), 6)
    sched2.load_state_dict(sched.state_dict())
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(1.0)


def _by_budget(name, **kw):
    return LrMultiplier(ScheduleConfig(name=name, **kw), total_steps=None)


def _at(f, fraction, step=100):
    f.progress = fraction
    return f(step)


def test_budget_placed_wsd_warms_up_holds_and_decays_by_fraction():
    f = _by_budget("wsd", warmup_fraction=0.1, decay_fraction=0.2, min_lr_ratio=0.0)
    assert f.by_budget
    assert _at(f, 0.0) == 0.0 and _at(f, 0.05) == pytest.approx(0.5) and _at(f, 0.1) == 1.0
    assert _at(f, 0.5) == 1.0 and _at(f, 0.8) == 1.0
    assert _at(f, 0.9) == pytest.approx(0.5) and _at(f, 1.0) == 0.0 and _at(f, 1.7) == 0.0


def test_budget_placed_linear_and_cosine_decay_from_warmup_to_the_end():
    lin = _by_budget("linear", warmup_fraction=0.2, min_lr_ratio=0.1)
    assert _at(lin, 0.6) == pytest.approx(1 - 0.9 * 0.5) and _at(lin, 1.0) == pytest.approx(0.1)
    cos = _by_budget("cosine", warmup_fraction=0.0, min_lr_ratio=0.0)
    assert _at(cos, 0.0) == 1.0 and _at(cos, 0.5) == pytest.approx(0.5) and _at(cos, 1.0) == pytest.approx(0.0)
    steps = _by_budget("constant", warmup_steps=4)  # warmup_steps still count steps
    assert [_at(steps, 0.5, s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_apply_progress_sets_the_next_steps_lr_now():
    from parallel.schedules import apply_progress

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = build_scheduler(opt, ScheduleConfig(name="wsd", warmup_fraction=0.0, decay_fraction=0.5), None)
    apply_progress(sched, 0.75)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0) and sched.get_last_lr() == [pytest.approx(1.0)]
    opt.step()
    sched.step()
    apply_progress(sched, 1.0)
    assert opt.param_groups[0]["lr"] == 0.0
    fixed = build_scheduler(opt, ScheduleConfig(name="linear", warmup_steps=0), 10)
    apply_progress(fixed, 0.9)  # placed by steps: progress changes nothing
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0)


def test_a_segment_restarts_the_curve_at_another_peak_and_survives_a_state_roundtrip():
    from parallel.schedules import start_segment

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = build_scheduler(opt, ScheduleConfig(name="constant", warmup_steps=2), 100)

    def steps(n):
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert steps(4) == pytest.approx([1.0, 2.0, 2.0, 2.0])
    # the decay of a WSD run as its own segment: linear from 0.5 x the peak to 0 over 4 steps
    start_segment(sched, ScheduleConfig(name="linear"), 4, scale=0.5)
    assert steps(2) == pytest.approx([1.0, 0.75])
    saved = sched.state_dict()
    tail = steps(3)
    assert tail == pytest.approx([0.5, 0.25, 0.0])
    opt2 = torch.optim.SGD([p], lr=2.0)
    sched2 = build_scheduler(opt2, ScheduleConfig(name="constant", warmup_steps=2), 100)
    sched2.load_state_dict(saved)   # a resume: the segment comes back from the checkpoint
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]
    again = []
    for _ in range(3):
        again.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert again == pytest.approx(tail)
    # a segment placed by progress (a phase measured in tokens)
    start_segment(sched, ScheduleConfig(name="linear", warmup_steps=0), None)
    from parallel.schedules import apply_progress

    apply_progress(sched, 0.25)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.5)
