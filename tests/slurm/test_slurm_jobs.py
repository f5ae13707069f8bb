"""Real sbatch jobs on a throwaway SLURM cluster with two emulated nodes (tests/slurm/cluster.py):
multi-node training equal to a local run, the time limit's signal, preemption, requeue, the
requeue cap, chains and sweeps. Each job carries several checks: a job costs ~20-60 s here.

Requeued jobs wait ~2 minutes before SLURM starts them again (its fixed cool-down); the tests
release them at once with `scontrol update StartTime=now`, which changes nothing else.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil

from launch_helpers import COMMON, launch, losses, metrics, run_env, start

TIMEOUT = 420  # per wait; a loaded 2-core machine starts a 4-rank attempt in ~60 s


def _env(slurm) -> dict:
    return dict(run_env(), **{"SLURM_CONF": slurm.env["SLURM_CONF"]})


def submit(slurm, root, data, name, *overrides, flags=()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "launch.train", *flags, f"run.root={root}", f"run.name={name}", f"data.path={data}",
           *COMMON, "precision=fp32", "cluster=slurm", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(slurm))


def job_ids(run_dir) -> list[str]:
    with open(os.path.join(run_dir, "slurm", "jobs.jsonl")) as f:
        return [json.loads(line)["job_id"] for line in f]


def log_of(run_dir, job) -> str:
    path = os.path.join(run_dir, "logs", f"slurm-{job}.out")
    return open(path, errors="replace").read() if os.path.exists(path) else ""


def wait_log(slurm, run_dir, job, pattern, timeout=TIMEOUT) -> re.Match:
    """Poll the job's log for `pattern` (a regex); fail with the log if the job ends without it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = log_of(run_dir, job)
        m = re.search(pattern, text)
        if m:
            return m
        state = slurm.job(job).get("JobState")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            text = log_of(run_dir, job)
            if re.search(pattern, text):
                return re.search(pattern, text)
            raise AssertionError(f"job {job} ended ({state}) without {pattern!r}:\n{text[-4000:]}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {pattern!r} in job {job}'s log:\n{log_of(run_dir, job)[-4000:]}")


def wait_steps(run_dir, at_least, slurm, job, timeout=TIMEOUT) -> int:
    deadline, polls = time.time() + timeout, 0
    while time.time() < deadline:
        done = max(losses(run_dir), default=0)
        if done >= at_least:
            return done
        polls += 1
        if polls % 50 == 0 and slurm.job(job).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            raise AssertionError(f"job {job} ended at step {done} before step {at_least}:\n{log_of(run_dir, job)[-4000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for step {at_least}:\n{log_of(run_dir, job)[-4000:]}")


def wait_ranks(run_dir, count, timeout=TIMEOUT) -> list:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = rank_processes(run_dir)
        if len(found) == count:
            return found
        time.sleep(0.5)
    raise AssertionError(f"expected {count} rank processes of {run_dir}, found {rank_processes(run_dir)}")


def release_requeued(slurm, job, *updates) -> None:
    """Wait until SLURM has put the job back in the queue, then let it start now."""
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        info = slurm.job(job)
        if info.get("JobState") == "PENDING" and info.get("Restarts") != "0":
            slurm.run(["scontrol", "update", f"JobId={job}", *updates, "StartTime=now"])
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job} was not requeued: {slurm.job(job)}")


def rank_processes(run_dir) -> list:
    """The run's rank processes (not torchrun, not their forked data-loader workers)."""
    found = {}
    for p in psutil.process_iter(["cmdline", "ppid"]):
        cmd = p.info["cmdline"] or []
        if cmd[-3:] == ["-m", "launch.worker", run_dir]:  # torchrun's own ends in "--module launch.worker <dir>"
            found[p.pid] = p
    return [p for p in found.values() if p.info["ppid"] not in found]


def attempts_in(text: str) -> list[str]:
    """The attempt banners, in log order; each must start its attempt's part of the log."""
    assert text.startswith("=== pretrain run "), text[:300]
    return re.findall(r"^=== pretrain run .*attempt (\d+) .*===$", text, re.M)


def status(slurm, run_dir) -> str:
    result = subprocess.run([sys.executable, "-m", "launch.status", run_dir], capture_output=True, text=True,
                            timeout=120, env=_env(slurm))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_two_nodes_of_two_ranks_train_exactly_like_four_local_ranks_then_evaluate_export_and_report(
        slurm, tiny_data, tmp_path):
    root = str(tmp_path / "runs")
    train = ["trainer.max_steps=6", "trainer.eval_every=3", "trainer.eval_batches=2", "trainer.checkpoint_every=3"]
    sub = submit(slurm, root, tiny_data, "multi", "cluster.nnodes=2", "cluster.nproc=2", "cluster.time=10",
                 "trainer.export_on_finish=true", *train)
    assert sub.returncode == 0, sub.stderr
    run_dir = os.path.join(root, "multi")
    (job,) = job_ids(run_dir)
    for needle in (f"submitted:     job {job} (2 node(s) x 2 process(es)", f"scancel {job}", f"pretrain-status {run_dir}",
                   f"logs/slurm-{job}.out", "sbatch --test-only: "):
        assert needle in sub.stdout, (needle, sub.stdout)
    reference = launch(root, tiny_data, "local4", "precision=fp32", "cluster.nproc=4", *train, timeout=TIMEOUT)
    assert reference.returncode == 0, reference.stderr[-3000:]

    info = slurm.wait_job(job, timeout=TIMEOUT)
    text = log_of(run_dir, job)
    assert info["JobState"] == "COMPLETED", text[-4000:]
    assert losses(run_dir) == losses(os.path.join(root, "local4")), "2 nodes x 2 ranks must equal 4 local ranks"
    assert sorted(losses(run_dir)) == list(range(1, 7))
    assert [m["step"] for m in metrics(run_dir) if "eval/mlm_acc" in m] == [3, 6]

    assert attempts_in(text) == ["1"]
    assert "[node 0/2 " in text and "[node 1/2 " in text
    left = int(re.search(rf"SLURM job {job}: (\d+)s left \(squeue", text).group(1))
    assert 0 < left <= 600, "rank 0 reads the job's time left from the real squeue"
    assert '[batch] the run finished: {"step": 6' in text
    with open(os.path.join(run_dir, "slurm", "attempts.jsonl")) as f:
        (attempt,) = [json.loads(line) for line in f]
    assert attempt["job_id"] == job and attempt["restart_count"] == 0 and attempt["nodes"] == "n[1-2]"

    from transformers import AutoModelForMaskedLM

    assert AutoModelForMaskedLM.from_pretrained(os.path.join(run_dir, "export")).num_parameters() > 0
    report = status(slurm, run_dir)
    for needle in ("cluster=slurm, 2 node(s) x 2 process(es)", "finished at step 6 (max_steps=6)",
                   "checkpoint  step 6", "last logged step 6", f"job {job}", "COMPLETED", "requeued 0 time(s)"):
        assert needle in report, (needle, report)


def test_time_limit_signal_then_preemption_requeue_cap_and_chain_resume_to_the_uninterrupted_losses(
        slurm, tiny_data, tmp_path):
    """One run, three jobs (cluster.chain=3), two nodes x one rank, checkpoint signal USR2:
    job 1, attempt 1: the time limit comes near, SLURM signals the batch shell -> checkpoint -> requeue;
    job 1, attempt 2: resumes; preempted by hand (scancel --signal --batch) -> checkpoint -> cap reached;
    job 2: resumes and finishes; job 3: finds the run finished and exits at once."""
    root = str(tmp_path / "runs")
    train = ["trainer.max_steps=40", "trainer.checkpoint_every=1000"]
    # torchrun sets OMP_NUM_THREADS=1 only for several ranks per node; the same thread count as the
    # local 2-rank reference keeps fp32 sums in the same order (cluster.env reaches the ranks).
    sub = submit(slurm, root, tiny_data, "long", "cluster.nnodes=2", "cluster.nproc=1", "cluster.signal=USR2",
                 "cluster.time=10", "cluster.signal_grace=300", "cluster.time_margin=0", "cluster.max_requeues=1",
                 "cluster.chain=3", "+cluster.env.OMP_NUM_THREADS=1", *train)
    assert sub.returncode == 0, sub.stderr
    reference = start(root, tiny_data, "ref2", "precision=fp32", "cluster.nproc=2", *train)
    run_dir = os.path.join(root, "long")
    first, second, third = job_ids(run_dir)
    assert f"job {second} after {first} (afterany)" in sub.stdout and f"scancel {first} {second} {third}" in sub.stdout

    # Attempt 1. The ranks are paused while the limit is moved near (less than signal_grace left),
    # so it is SLURM's own --signal=B:USR2@300 that stops them, however fast they train.
    ranks = wait_ranks(run_dir, 2)
    wait_steps(run_dir, 1, slurm, first)
    for p in ranks:
        p.send_signal(signal.SIGSTOP)
    try:
        ran = slurm.job(first)["RunTime"].split(":")
        elapsed = int(ran[-2]) * 60 + int(ran[-1])
        slurm.run(["scontrol", "update", f"JobId={first}", f"TimeLimit={elapsed // 60 + 2}"])
        wait_log(slurm, run_dir, first, r"\[batch\] SIGUSR2 at .*checkpoint and stop", timeout=120)
    finally:
        for p in ranks:
            p.send_signal(signal.SIGCONT)
    wait_log(slurm, run_dir, first, r"requeueing \d+ \(requeue 1 of at most 1\)")
    release_requeued(slurm, first, "TimeLimit=10")

    # Attempt 2: resumed, then preempted by hand; the cap stops the requeueing.
    resumed = int(wait_log(slurm, run_dir, first, r"resumed from step (\d+)").group(1))
    stopped_at_1 = resumed
    wait_steps(run_dir, resumed + 2, slurm, first)
    slurm.run(["scancel", "--signal=USR2", "--batch", first])
    info = slurm.wait_job(first, timeout=TIMEOUT)
    text = log_of(run_dir, first)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, text[-3000:])
    assert attempts_in(text) == ["1", "2"]
    assert "not requeueing: cluster.max_requeues=1 reached (requeued 1 times)" in text
    assert text.count("stopped at step") == 2 and "preempted" in text

    # Job 2 continues where job 1 stopped and finishes; job 3 has nothing left to do.
    slurm.wait_job(third, timeout=TIMEOUT)
    two, three = log_of(run_dir, second), log_of(run_dir, third)
    resumed_2 = int(re.search(r"resumed from step (\d+)", two).group(1))
    assert stopped_at_1 < resumed_2 < 40
    assert '[batch] the run finished: {"step": 40' in two
    assert "the run already finished" in three and "[setup]" not in three
    assert all(slurm.job(j)["JobState"] == "COMPLETED" for j in (second, third))

    steps = [m["step"] for m in metrics(run_dir) if "train/loss" in m]
    assert steps == list(range(1, 41)), "metrics steps never repeat across requeues and chained jobs"
    _, err = reference.communicate(timeout=TIMEOUT)
    assert reference.returncode == 0, err[-3000:]
    assert losses(run_dir) == losses(os.path.join(root, "ref2")), "interrupted 3 times, identical to no interruption"
    report = status(slurm, run_dir)
    assert "finished at step 40" in report and f"job {first}" in report and "requeued 1 time(s)" in report


def test_sweep_submits_one_job_per_combination_each_with_its_own_run_directory(slurm, tiny_data, tmp_path):
    root = str(tmp_path / "runs")
    sub = submit(slurm, root, tiny_data, "sw", "optim.lr=1e-3,2e-3", "trainer.max_steps=2", flags=("-m",))
    assert sub.returncode == 0, sub.stderr[-3000:]
    assert sub.stdout.count("submitted:") == 2
    (job0,), (job1,) = job_ids(os.path.join(root, "sw-0")), job_ids(os.path.join(root, "sw-1"))
    assert job0 != job1
    again = submit(slurm, root, tiny_data, "sw-0", "optim.lr=1e-3", "trainer.max_steps=2")
    lines = [line for line in again.stderr.splitlines() if line.strip()]
    if slurm.job(job0)["JobState"] != "COMPLETED":  # still queued or running: a second job is refused
        assert again.returncode == 2 and len(lines) == 1 and f"already has SLURM job {job0}" in lines[0], again.stderr
    for num, lr, job in ((0, 0.001, job0), (1, 0.002, job1)):
        run_dir = os.path.join(root, f"sw-{num}")
        info = slurm.wait_job(job, timeout=TIMEOUT)
        assert info["JobState"] == "COMPLETED", log_of(run_dir, job)[-3000:]
        assert f"lr: {lr}" in open(os.path.join(run_dir, "config.yaml")).read()
        assert sorted(losses(run_dir)) == [1, 2]
        assert '"reason": "max_steps=2"' in open(os.path.join(run_dir, "finished.json")).read()
