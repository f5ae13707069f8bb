"""Real sbatch jobs on a throwaway SLURM cluster with two emulated nodes (tests/slurm/cluster.py):
multi-node training equal to a local run, the time limit's signal, preemption, requeue, the
requeue cap, chains and sweeps. Each job carries several checks: a job costs ~20-60 s here.

SLURM holds a requeued job for its credential lifetime before starting it again (120 s by
default, 20 s in the test cluster: tests/slurm/cluster.py CRED_EXPIRE).
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

from launch_helpers import COMMON, kill_tree, launch, losses, metrics, run_env, start

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


def attempt_log(run_dir, job, attempt=None) -> str:
    """The job's log, or only the part written by one attempt (from its banner on)."""
    text = log_of(run_dir, job)
    if attempt is None:
        return text
    parts = re.split(r"^(?==== pretrain run .*attempt \d+ )", text, flags=re.M)
    return "".join(p for p in parts if re.match(rf"=== pretrain run .*attempt {attempt} ", p))


def wait_log(slurm, run_dir, job, pattern, timeout=TIMEOUT, attempt=None) -> re.Match:
    """Poll the job's log (or one attempt's part of it) for `pattern` (a regex); fail with the log
    if the job ends without it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = re.search(pattern, attempt_log(run_dir, job, attempt))
        if m:
            return m
        state = slurm.job(job).get("JobState")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            m = re.search(pattern, attempt_log(run_dir, job, attempt))
            if m:
                return m
            raise AssertionError(f"job {job} ended ({state}) without {pattern!r}:\n{log_of(run_dir, job)[-4000:]}")
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


def when_requeued(slurm, job, restarts: int, *updates) -> None:
    """Wait until SLURM has put the job back in the queue (`restarts` times), then apply
    `scontrol update` settings to it before it starts again."""
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        info = slurm.job(job)
        if info.get("JobState") == "PENDING" and info.get("Restarts") == str(restarts):
            if updates:
                slurm.run(["scontrol", "update", f"JobId={job}", *updates])
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job} was not requeued {restarts} time(s): {slurm.job(job)}")


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


def batch_shell(job):
    """The job's batch script process (slurmd runs it as <spool>/job<id>/slurm_script)."""
    for p in psutil.process_iter(["cmdline"]):
        if any(re.search(rf"job0*{job}/slurm_script$", part) for part in p.info["cmdline"] or []):
            return p
    raise AssertionError(f"no batch shell found for job {job}")


def elapsed_seconds(slurm, job) -> int:
    parts = [int(x) for x in re.split(r"[-:]", slurm.job(job)["RunTime"])]
    seconds = 0
    for part in parts[-3:]:
        seconds = seconds * 60 + part
    return seconds


def test_preemption_time_limit_and_safety_net_requeue_then_cap_then_the_chain_finishes_with_identical_losses(
        slurm, tiny_data, tmp_path, request):
    """One run, two nodes x one rank, checkpoint signal USR2, cluster.chain=3, max_requeues=2.
    Job 1 is stopped three times, each time by another mechanism, and checkpoints every time:
      attempt 1: scancel --signal=USR2 --batch (preemption by hand)         -> requeue 1
      attempt 2: the time limit comes near: SLURM's --signal=B:USR2@300      -> requeue 2
      attempt 3: the batch shell never gets to pass a signal on: the safety
                 net (rank 0 polls squeue, time_margin=150) stops the ranks  -> the cap: no requeue
    Job 2 resumes where job 1 stopped and finishes; job 3 finds the run finished and exits at once.
    The time limit is moved near with `scontrol update TimeLimit` (minutes), so the test does not
    wait for a real one; the ranks or the batch shell are paused meanwhile so that exactly the
    mechanism under test is the one that stops the run."""
    root = str(tmp_path / "runs")
    train = ["trainer.max_steps=120", "trainer.checkpoint_every=1000"]
    # torchrun sets OMP_NUM_THREADS=1 only for several ranks per node; the same thread count as the
    # local 2-rank reference keeps fp32 sums in the same order (cluster.env reaches the ranks).
    sub = submit(slurm, root, tiny_data, "long", "cluster.nnodes=2", "cluster.nproc=1", "cluster.signal=USR2",
                 "cluster.time=10", "cluster.signal_grace=300", "cluster.time_margin=150", "cluster.time_poll=1",
                 "cluster.max_requeues=2", "cluster.chain=3", "+cluster.env.OMP_NUM_THREADS=1", *train)
    assert sub.returncode == 0, sub.stderr
    reference = start(root, tiny_data, "ref2", "precision=fp32", "cluster.nproc=2", *train)  # alongside
    request.addfinalizer(lambda: reference.poll() is None and kill_tree(reference))  # if the test fails early
    run_dir = os.path.join(root, "long")
    first, second, third = job_ids(run_dir)
    assert f"job {second} after {first} (afterany)" in sub.stdout and f"scancel {first} {second} {third}" in sub.stdout

    # Attempt 1: preempted by hand.
    wait_steps(run_dir, 2, slurm, first)
    slurm.run(["scancel", "--signal=USR2", "--batch", first])
    wait_log(slurm, run_dir, first, r"requeueing \d+ \(requeue 1 of at most 2\)")
    when_requeued(slurm, first, 1)

    # Attempt 2: 3-4 minutes left (< signal_grace, > time_margin) while the ranks are paused, so it
    # is SLURM's own signal to the batch shell, passed on to the ranks, that stops them.
    resumed = int(wait_log(slurm, run_dir, first, r"resumed from step (\d+)", attempt=2).group(1))
    ranks = wait_ranks(run_dir, 2)
    wait_steps(run_dir, resumed + 1, slurm, first)
    for p in ranks:
        p.send_signal(signal.SIGSTOP)
    try:
        slurm.run(["scontrol", "update", f"JobId={first}", f"TimeLimit={elapsed_seconds(slurm, first) // 60 + 4}"])
        wait_log(slurm, run_dir, first, r"\[batch\] SIGUSR2 at ", timeout=120, attempt=2)
    finally:
        for p in ranks:
            p.send_signal(signal.SIGCONT)
    wait_log(slurm, run_dir, first, r"requeueing \d+ \(requeue 2 of at most 2\)", attempt=2)
    when_requeued(slurm, first, 2, "TimeLimit=10")

    # Attempt 3: 1-2 minutes left (< time_margin) while the batch shell is paused: only the ranks'
    # own squeue poll can stop them.
    wait_log(slurm, run_dir, first, r"resumed from step \d+", attempt=3)
    shell = batch_shell(first)
    shell.send_signal(signal.SIGSTOP)
    try:
        slurm.run(["scontrol", "update", f"JobId={first}", f"TimeLimit={elapsed_seconds(slurm, first) // 60 + 2}"])
        wait_log(slurm, run_dir, first, r"stopped at step \d+: preempted", timeout=120, attempt=3)
        assert "[batch] SIGUSR2" not in attempt_log(run_dir, first, 3)
    finally:
        shell.send_signal(signal.SIGCONT)
    info = slurm.wait_job(first, timeout=TIMEOUT)
    text = log_of(run_dir, first)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "2", (info, text[-3000:])
    assert attempts_in(text) == ["1", "2", "3"]
    third_attempt = attempt_log(run_dir, first, 3)
    assert re.search(rf"SLURM job {first} has about \d+s left \(< cluster.time_margin=150s\)", third_attempt)
    assert "not requeueing: cluster.max_requeues=2 reached (requeued 2 times)" in third_attempt
    stops = [int(s) for s in re.findall(r"stopped at step (\d+): preempted", text)]
    assert len(stops) == 3 and stops == sorted(stops)

    # Job 2 continues where job 1 stopped and finishes; job 3 has nothing left to do.
    slurm.wait_job(third, timeout=TIMEOUT)
    two, three = log_of(run_dir, second), log_of(run_dir, third)
    assert f"resumed from step {stops[-1]} " in two
    assert '[batch] the run finished: {"step": 120' in two
    assert "the run already finished" in three and "[setup]" not in three
    assert all(slurm.job(j)["JobState"] == "COMPLETED" for j in (second, third))

    steps = [m["step"] for m in metrics(run_dir) if "train/loss" in m]
    assert steps == list(range(1, 121)), "metrics steps never repeat across requeues and chained jobs"
    _, err = reference.communicate(timeout=TIMEOUT)
    assert reference.returncode == 0, err[-3000:]
    assert losses(run_dir) == losses(os.path.join(root, "ref2")), "stopped 3 times, identical to no interruption"
    report = status(slurm, run_dir)
    assert "finished at step 120" in report and f"job {first}" in report and "requeued 2 time(s)" in report


def test_sweep_submits_one_job_per_combination_each_with_its_own_run_directory(slurm, tiny_data, tmp_path):
    root = str(tmp_path / "runs")
    sub = submit(slurm, root, tiny_data, "sw", "optim.lr=1e-3,2e-3", "trainer.max_steps=2", flags=("-m",))
    assert sub.returncode == 0, sub.stderr[-3000:]
    assert sub.stdout.count("submitted:") == 2
    (job0,), (job1,) = job_ids(os.path.join(root, "sw-0")), job_ids(os.path.join(root, "sw-1"))
    assert job0 != job1
    # A run whose job is still queued or running is not submitted twice (held: surely still queued).
    slurm.run(["scontrol", "hold", job0], check=False)  # fails harmlessly if it already runs
    again = submit(slurm, root, tiny_data, "sw-0", "optim.lr=1e-3", "trainer.max_steps=2")
    slurm.run(["scontrol", "release", job0], check=False)
    lines = [line for line in again.stderr.splitlines() if line.strip()]
    assert again.returncode == 2 and len(lines) == 1 and f"already has SLURM job {job0}" in lines[0], again.stderr
    # What SLURM itself would refuse is found by sbatch --test-only before anything is written.
    refused = submit(slurm, root, tiny_data, "nowhere", "cluster.partition=gpu-that-does-not-exist")
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1 and "sbatch --test-only refused the job" in lines[0], refused.stderr
    assert "partition" in lines[0] and not os.path.exists(os.path.join(root, "nowhere"))
    for num, lr, job in ((0, 0.001, job0), (1, 0.002, job1)):
        run_dir = os.path.join(root, f"sw-{num}")
        info = slurm.wait_job(job, timeout=TIMEOUT)
        assert info["JobState"] == "COMPLETED", log_of(run_dir, job)[-3000:]
        assert f"lr: {lr}" in open(os.path.join(run_dir, "config.yaml")).read()
        assert sorted(losses(run_dir)) == [1, 2]
        assert '"reason": "max_steps=2"' in open(os.path.join(run_dir, "finished.json")).read()
