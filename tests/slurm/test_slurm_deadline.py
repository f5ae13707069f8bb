"""The trainer-side pieces of SLURM support, in-process: SLURM time syntax, the time-limit safety
net (polling cadence, countdown, failures), the configurable checkpoint signal caught from the
first moment, and precision=auto resolved once into config.yaml by the job setup step."""
from __future__ import annotations

import os
import signal

import pytest
from omegaconf import OmegaConf

from pretrain.train.budget import JobDeadline, parse_time_left, slurm_job_ref
from pretrain.train.config import ConfigError, parse_slurm_time
from pretrain.train.preemption import PreemptionFlag, checkpoint_signals, ignore_late, install_early


@pytest.mark.parametrize("text, seconds", [
    ("30", 1800), ("1:30", 90), ("0:45", 45), ("01:00:00", 3600), ("2:03:04", 7384), ("1-0", 86400),
    ("1-02", 93600), ("1-02:03", 93780), ("1-02:03:04", 93784), ("UNLIMITED", None), ("infinite", None),
])
def test_slurm_time_syntax(text, seconds):
    assert parse_slurm_time(text) == seconds


@pytest.mark.parametrize("bad", ["", "abc", "1:2:3:4", "-5", "1-", "10m"])
def test_bad_slurm_time_names_the_key(bad):
    with pytest.raises(ConfigError, match="cluster.time"):
        parse_slurm_time(bad)


def test_squeue_time_left_output():
    assert parse_time_left("9:59") == 599
    assert parse_time_left("1-00:00:05\n") == 86405
    for unknown in ("UNLIMITED", "NOT_SET", "INVALID", "", "  "):
        assert parse_time_left(unknown) is None
    with pytest.raises(ValueError, match="unexpected squeue"):
        parse_time_left("soon")


def test_job_ref_is_array_aware():
    assert slurm_job_ref({"SLURM_JOB_ID": "7"}) == "7"
    assert slurm_job_ref({"SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "2"}) == "5_2"
    assert slurm_job_ref({}) is None


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_deadline_polls_at_most_every_poll_interval_and_counts_down_between():
    clock, calls, logged = Clock(), [], []

    def query(job):
        calls.append((job, clock.now))
        return 300.0

    d = JobDeadline("42", margin=120, poll_every=60, query=query, clock=clock, log=logged.append)
    assert not d.near() and len(calls) == 1
    for _ in range(100):  # many steps within one poll interval: no more queries
        clock.now += 0.5
        d.near()
    assert len(calls) == 1
    clock.now = 1000 + 170  # 300 - 170 = 130 s left (query 2 says 300 again: the limit was extended)
    assert not d.near() and len(calls) == 2
    clock.now += 59  # counted down from the second answer: 300 - 59 = 241
    assert d.seconds_left() == pytest.approx(241)
    clock.now += 1  # a third poll, this time SLURM says 100 s left
    calls.clear()
    d._query = lambda job: 100.0
    assert d.near()
    assert any("cluster.time_margin=120s" in m for m in logged) and "42" in logged[-1]


def test_deadline_survives_failed_queries_and_unlimited_jobs():
    clock, logged = Clock(), []
    answers = iter([200.0, OSError("slurmctld unreachable"), OSError("again")])

    def query(job):
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    d = JobDeadline("1", margin=60, poll_every=10, query=query, clock=clock, log=logged.append)
    assert not d.near()
    clock.now += 10  # query fails: keep counting down from 200
    assert not d.near() and d.seconds_left() == pytest.approx(190)
    clock.now += 135  # 200 - 145 = 55 < 60, even though every query since failed
    assert d.near()
    assert sum("cannot read" in m for m in logged) == 1  # warned once, not per step
    unlimited = JobDeadline("1", margin=60, query=lambda job: None, clock=clock, log=logged.append)
    assert not unlimited.near() and unlimited.seconds_left() is None


def test_deadline_without_squeue_counts_down_from_the_batch_scripts_reading(monkeypatch):
    cluster = OmegaConf.create({"time_margin": 100, "time_poll": 60})
    assert JobDeadline.from_env(cluster, env={}) is None  # not in SLURM
    assert JobDeadline.from_env(OmegaConf.create({"time_margin": 0, "time_poll": 60}), env={"SLURM_JOB_ID": "3"}) is None
    monkeypatch.setenv("PATH", "/nonexistent")  # no squeue here (a container)
    clock = Clock()
    env = {"SLURM_JOB_ID": "3", "PRETRAIN_JOB_TIME_LEFT": "5:00", "PRETRAIN_JOB_TIME_LEFT_AT": str(clock.now - 100)}
    d = JobDeadline.from_env(cluster, env=env, log=lambda m: None)
    d._clock = clock
    assert d.seconds_left() == pytest.approx(200) and not d.near()
    clock.now += 101
    assert d.near()


def test_checkpoint_signal_is_configurable_and_kept_from_before_the_loop():
    assert checkpoint_signals("USR2") == (signal.SIGTERM, signal.SIGUSR2)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    try:
        install_early(checkpoint_signals("USR2"))
        os.kill(os.getpid(), signal.SIGUSR2)  # arrives while the engine is still being built
        flag = PreemptionFlag(checkpoint_signals("USR2"))
        assert flag.local and flag.received == signal.SIGUSR2
        fresh = PreemptionFlag(checkpoint_signals("USR2"))  # the early signal is taken over once
        assert not fresh.local
        os.kill(os.getpid(), signal.SIGUSR2)
        assert fresh.local

        class Near:
            def near(self):
                return True

        assert PreemptionFlag(checkpoint_signals("USR1"), deadline=Near()).local
        # After the loop a late signal is ignored: CPython would reset a Python handler to the
        # default (terminate) while the rank exits, and the node would look failed.
        ignore_late("USR2")
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGUSR2)
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN  # SIGTERM still ends a stuck rank
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def test_job_setup_resolves_precision_auto_once_into_config_yaml(tmp_path):
    """precision.dtype=auto is what config.yaml holds for a SLURM run until the job's first node
    resolves it; this path reads the raw file (no schema), so it works whatever the choices."""
    from launch.slurm_setup import settle_job_precision
    from pretrain.train.rundir import load_raw_config

    (tmp_path / "config.yaml").write_text("precision:\n  dtype: auto\n  loss_scale: 0.0\ncluster:\n  kind: slurm\n")
    logged = []
    lines = settle_job_precision(str(tmp_path), log=logged.append)
    stored = load_raw_config(str(tmp_path))
    assert stored.precision.dtype in ("fp32", "bf16") and stored.precision.loss_scale == 0.0
    assert stored.precision.resolved_from == "auto" and stored.precision.reason
    assert lines and logged[0] == f"[setup] {lines[0]}" and stored.precision.dtype in logged[0]
    assert settle_job_precision(str(tmp_path), log=logged.append) is None  # later attempts keep it
    assert load_raw_config(str(tmp_path)).precision.dtype == stored.precision.dtype
    assert not os.path.exists(tmp_path / "config.yaml.tmp")


def test_master_port_comes_from_the_job_id_never_a_fixed_default(monkeypatch):
    from omegaconf import OmegaConf

    from launch.slurm_node import node_geometry, rendezvous_port
    from parallel.topology import detect, slurm_master_port

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "x")  # recorded, so teardown removes what detect() sets
        monkeypatch.delenv(k)
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "n[1-2]",
           "SLURM_JOB_ID": "123456"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    detect()
    assert os.environ["MASTER_PORT"] == str(slurm_master_port(123456)) == "18456"
    assert all(15000 <= slurm_master_port(j) < 30000 for j in (0, 14999, 15000, 29999, 10**9 + 7))
    cfg = OmegaConf.create({"cluster": {"master_port": 0, "nnodes": 2}})
    assert rendezvous_port(cfg, env) == 18456
    assert rendezvous_port(OmegaConf.create({"cluster": {"master_port": 23000, "nnodes": 2}}), env) == 23000
    with pytest.raises(ConfigError, match="MASTER_ADDR not set"):
        node_geometry(cfg, {**env, "SLURM_NODEID": "1"})
    with pytest.raises(ConfigError, match="cluster.nnodes"):
        node_geometry(cfg, {**env, "SLURM_NODEID": "1", "SLURM_NNODES": "3", "MASTER_ADDR": "10.0.0.1"})
    assert node_geometry(cfg, {**env, "SLURM_NODEID": "1", "MASTER_ADDR": "10.0.0.1"}) == (1, 2, "10.0.0.1")
