"""The non-finite and loss-spike policies (pretrain/train/nonfinite.py), in-process.

The decisions are pure functions of the step's global metrics and TrainState; the engine they
act on is a stand-in that records what it is asked (the real engine, collectives and launches are
tested in tests/parallel/test_engine_dist.py and tests/launch/test_launch_nonfinite.py). The
checkpoints are real CheckpointManager directories.
"""
import math
import os
from types import SimpleNamespace

import pytest

from parallel.checkpoint import Layout, write_meta
from pretrain.train.checkpoint_manager import CheckpointManager, step_dir_name
from pretrain.train.nonfinite import NonFiniteState, Watchdog, spike_ratio
from pretrain.train.state import TrainState

NAN = float("nan")


class Engine:
    """What the Watchdog and CheckpointManager call on an engine, recorded."""

    signature = "sig"
    layout = Layout(world_size=1, zero_stage=0, dtype="fp32")

    def __init__(self, finite=True):
        self.finite, self.loaded, self.saved, self.global_step = finite, [], [], 10

    def state_is_finite(self):
        return self.finite

    def load(self, plan):
        self.loaded.append(os.path.basename(plan.path))
        self.global_step = plan.meta["global_step"]
        return {"train_state": {}}

    def save(self, step_dir, client_state, meta=None):
        os.makedirs(step_dir, exist_ok=True)
        self.saved.append(os.path.basename(step_dir))
        write_meta(step_dir, {"world_size": 1, "zero_stage": 0, "dtype": "fp32", "model_signature": "sig",
                              "global_step": int(step_dir[-6:]), **(meta or {})})


def checkpoint(manager, step, finite=True):
    d = os.path.join(manager.root, step_dir_name(step))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model.pt"), "wb") as f:
        f.write(b"x" * 10)
    meta = {"world_size": 1, "zero_stage": 0, "dtype": "fp32", "model_signature": "sig", "global_step": step}
    write_meta(d, {**meta, **({"state_finite": True} if finite else {})})
    manager.publish_latest(d)


def watchdog(tmp_path, policy="stop", max_skips=2, max_rewinds=2, factor=3.0, window=4, warmup=5,
             action="log", lr=1e-3, grad_clip=1.0, dtype="fp32"):
    state, logs = TrainState(), []
    manager = CheckpointManager(str(tmp_path), keep=2, log=logs.append)
    spike = SimpleNamespace(factor=factor, window=window, warmup=warmup, action=action)
    dog = Watchdog(policy, max_skips, max_rewinds, spike, state, manager,
                   {"lr": lr, "grad_clip": grad_clip, "dtype": dtype}, logs.append)
    return dog, state, manager, logs


def m(loss, grad_norm=1.0, skipped=0.0):
    return {"loss": loss, "grad_norm": grad_norm, "skipped": skipped}


def test_stop_is_one_line_naming_step_checkpoint_and_what_to_try(tmp_path):
    dog, state, manager, _ = watchdog(tmp_path, grad_clip=0.0, dtype="fp16")
    checkpoint(manager, 5)
    v = dog.check(Engine(), 7, m(NAN, NAN, 1.0), nonfinite=True)
    assert v.event == "nonfinite" and "\n" not in v.stop
    for needle in ("diverged at step 7", "loss=nan", "stopped without saving",
                   f"{manager.root}/step_000005 (still `latest`)", "optim.lr (now 0.001)",
                   "optim.grad_clip=1.0 (clipping is off)", "precision=bf16 instead of fp16",
                   "trainer.on_nonfinite=skip|rewind"):
        assert needle in v.stop, (needle, v.stop)
    assert state.nonfinite_steps == 1 and state.skipped_updates == 1
    dog, *_ = watchdog(tmp_path / "fresh")
    v = dog.check(Engine(), 2, m(NAN), nonfinite=True)
    assert "no checkpoint was written yet" in v.stop and "grad_clip" not in v.stop and "bf16" not in v.stop


def test_skip_allows_max_skips_in_a_row_then_stops_and_records_the_batches(tmp_path):
    dog, state, _, logs = watchdog(tmp_path, policy="skip", max_skips=2)
    engine = Engine()
    assert dog.check(engine, 1, m(2.0), False).event is None
    assert dog.check(engine, 2, m(NAN, skipped=1.0), True).event == "skipped"
    assert dog.check(engine, 3, m(1.9, math.inf, 1.0), True).event == "skipped"  # a NaN gradient alone counts
    assert dog.check(engine, 4, m(1.8), False).stop is None                    # a good step resets the streak
    assert [dog.check(engine, s, m(NAN), True).event for s in (5, 6)] == ["skipped", "skipped"]
    v = dog.check(engine, 7, m(NAN), True)
    assert "3 non-finite steps in a row (trainer.max_skips=2)" in v.stop
    assert state.discarded == [[2, 3], [5, 6]] and state.discarded_batches == 4
    assert state.skipped_updates == 2 and state.nonfinite_steps == 5
    assert any("update dropped" in line and "step 2" in line for line in logs)


def test_skip_stops_when_the_weights_themselves_are_not_finite(tmp_path):
    dog, state, *_ = watchdog(tmp_path, policy="skip")
    v = dog.check(Engine(finite=False), 3, m(NAN), True)
    assert "weights themselves are not finite" in v.stop and "on_nonfinite=rewind" in v.stop
    assert state.discarded == []


def test_rewind_loads_the_newest_finite_checkpoint_and_discards_the_batches_since(tmp_path):
    dog, state, manager, logs = watchdog(tmp_path, policy="rewind", max_rewinds=2)
    engine = Engine()
    assert "no checkpoint to rewind to yet" in dog.check(engine, 2, m(NAN), True).stop
    checkpoint(manager, 4)
    checkpoint(manager, 8, finite=False)  # written before saves were checked: not preferred
    assert dog.check(engine, 11, m(NAN), True).event == "rewound"
    assert engine.loaded == ["step_000004"] and engine.global_step == 4
    assert state.rewinds == [{"at": 11, "to": 4, "why": state.rewinds[0]["why"]}]
    assert state.discarded == [[5, 11]]
    assert any("rewound to" in line and "batches 5-11 discarded" in line for line in logs)
    assert dog.check(engine, 13, m(NAN), True).event == "rewound"  # again to step 4: 12-13 added
    assert state.discarded == [[5, 13]] and state.discarded_batches == 9
    v = dog.check(engine, 14, m(NAN), True)
    assert "after 2 rewinds (trainer.max_rewinds=2)" in v.stop and engine.loaded == ["step_000004"] * 2


def test_loss_spike_is_logged_after_warmup_and_rewinds_when_asked(tmp_path):
    assert spike_ratio([], 1.0) is None and spike_ratio([1.0, 2.0, 4.0], 6.0) == 3.0
    dog, state, _, logs = watchdog(tmp_path, factor=3.0, window=4, warmup=5)
    engine = Engine()
    ratios = [dog.check(engine, s, m(loss), False).loss_ratio for s, loss in enumerate([2.0, 2.0, 20.0], 1)]
    assert ratios == [None, 1.0, 10.0] and state.loss_spikes == 0  # step 3 is within warmup
    for s in range(4, 7):
        dog.check(engine, s, m(2.0), False)
    assert state.loss_window == [20.0, 2.0, 2.0, 2.0]  # the last `window` losses
    v = dog.check(engine, 7, m(7.0), False)
    assert v.event == "loss_spike" and v.loss_ratio == 3.5 and state.loss_spikes == 1
    assert any("loss spike" in line and "at step 7" in line for line in logs)
    assert dog.metrics(v)["train/loss_ratio"] == 3.5 and dog.metrics(v)["train/loss_spikes"] == 1

    dog, state, manager, _ = watchdog(tmp_path / "r", policy="stop", factor=3.0, window=2, warmup=0, action="rewind")
    checkpoint(manager, 2)
    for s in (1, 2, 3):
        dog.check(engine, s, m(1.0), False)
    v = dog.check(engine, 4, m(5.0), False)
    assert v.event == "rewound" and state.rewinds[0]["to"] == 2 and "loss spike" in state.rewinds[0]["why"]
    assert state.loss_window == [1.0, 1.0]  # a rewound loss never enters the median


def test_unsaveable_state_rewinds_or_stops(tmp_path):
    dog, *_ = watchdog(tmp_path, policy="skip")
    assert "weights or optimizer state became non-finite" in dog.unsaveable(Engine(False), 6).stop
    dog, state, manager, _ = watchdog(tmp_path / "r", policy="rewind")
    checkpoint(manager, 3)
    assert dog.unsaveable(Engine(False), 6).event == "rewound" and state.discarded == [[4, 6]]


def test_a_save_never_writes_a_non_finite_state_and_clears_a_killed_save(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep=1, log=lambda _: None)
    checkpoint(manager, 2)
    with pytest.raises(NonFiniteState):
        manager.save(Engine(finite=False), 3, {})
    assert not os.path.exists(os.path.join(manager.root, "step_000003")) and manager.latest_step() == 2
    leftover = os.path.join(manager.root, "step_000003")  # a save killed before publishing
    os.makedirs(leftover)
    open(os.path.join(leftover, "parallel_meta.json.tmp"), "w").close()
    manager.save(Engine(), 3, {})
    assert os.listdir(leftover) == ["parallel_meta.json"] and manager.latest_step() == 3


def test_retention_keeps_the_newest_checkpoint_checked_finite(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep=1, log=lambda _: None)
    checkpoint(manager, 1)
    checkpoint(manager, 2)
    checkpoint(manager, 3, finite=False)
    checkpoint(manager, 4, finite=False)
    manager.prune()
    assert [s for s, _ in manager.step_dirs()] == [4, 2]


def test_train_state_round_trip_and_merged_ranges():
    s = TrainState()
    for lo, hi in ((5, 5), (9, 12), (6, 6), (11, 14), (20, 20)):
        s.discard(lo, hi)
    assert s.discarded == [[5, 6], [9, 14], [20, 20]] and s.discarded_batches == 9
    s.rewinds.append({"at": 14, "to": 8, "why": "x"})
    s.loss_window = [1.0, 2.0]
    again = TrainState()
    again.restore(s.to_dict())
    assert again == s
    old = TrainState()
    old.restore({"step": 3})  # a checkpoint from before these fields existed
    assert old.step == 3 and old.discarded == [] and old.rewinds == []


def _compose(*overrides):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = dict(compose(config_name="train", overrides=["run.name=t", "data.path=/x", *overrides]))
    cfg.pop("hydra", None)
    return cfg


def test_defaults_come_from_conf_trainer():
    from pretrain.train.config import validate

    t = validate(_compose()).trainer
    assert (t.on_nonfinite, t.max_skips, t.max_rewinds) == ("stop", 3, 3)
    assert (t.loss_spike.factor, t.loss_spike.window, t.loss_spike.warmup, t.loss_spike.action) == (3.0, 50, 100, "log")


@pytest.mark.parametrize("override, needle", [
    ("trainer.on_nonfinite=ignore", "trainer.on_nonfinite"),
    ("trainer.loss_spike.action=stop", "trainer.loss_spike.action"),
    ("trainer.max_skips=-1", "trainer.max_skips"),
    ("trainer.loss_spike.window=0", "trainer.loss_spike.window"),
])
def test_config_errors_name_the_key(override, needle):
    from pretrain.train.config import ConfigError, validate

    with pytest.raises(ConfigError) as e:
        validate(_compose(override))
    assert needle in str(e.value) and "\n" not in str(e.value)
