"""When to stop: max steps, tokens or wall-clock time, whichever comes first (Budget), and the
SLURM job's own time limit (JobDeadline), which stops a run like a preemption: checkpoint, exit 0,
requeue; the run is not finished."""
from __future__ import annotations

import time
from typing import Optional

from pretrain.train.config import parse_duration


class Budget:
    """The run's budgets. Time counts training time across launches: `train_seconds` (saved in
    TrainState) is where this launch starts, so a resumed run continues its budget (time lost
    after the last checkpoint to a crash is not counted)."""

    def __init__(self, max_steps: Optional[int], max_tokens: Optional[int], max_time: Optional[str],
                 train_seconds: float = 0.0):
        self.max_steps = max_steps
        self.max_tokens = max_tokens
        self.max_seconds = parse_duration(max_time) if max_time is not None else None
        self._seconds_at_start = float(train_seconds)
        self._start = time.monotonic()

    def local_seconds(self) -> float:
        """This process's view of the training time so far; ranks agree on the mean of theirs."""
        return self._seconds_at_start + time.monotonic() - self._start

    def used(self, step: int, tokens: int, seconds: float) -> dict[str, float]:
        """Fraction used of each budget that is set ({"max_steps": 0.2, "max_time": 0.5})."""
        out = {}
        if self.max_steps is not None:
            out["max_steps"] = step / self.max_steps
        if self.max_tokens is not None:
            out["max_tokens"] = tokens / self.max_tokens
        if self.max_seconds is not None:
            out["max_time"] = seconds / self.max_seconds
        return out

    def fraction(self, step: int, tokens: int, seconds: float) -> float:
        """How far the run is, in [0, 1]: the budget closest to its end binds."""
        return min(1.0, max(self.used(step, tokens, seconds).values(), default=0.0))

    def binding(self, step: int, tokens: int, seconds: float) -> str:
        """The name of the budget closest to its end (max_steps, max_tokens or max_time)."""
        used = self.used(step, tokens, seconds)
        return max(used, key=used.get) if used else "none"

    def describe(self, key: str) -> str:
        return {"max_steps": f"max_steps={self.max_steps}", "max_tokens": f"max_tokens={self.max_tokens}",
                "max_time": f"max_time={self.max_seconds:.0f}s" if self.max_seconds is not None else ""}.get(key, key)

    def exhausted(self, step: int, tokens: int, seconds: float) -> Optional[str]:
        """The reason to stop, or None; the arguments are global (every rank agrees on them)."""
        for key, used in self.used(step, tokens, seconds).items():
            if used >= 1.0:
                return self.describe(key)
        return None


def schedule_steps(schedule_total_steps: Optional[int], max_steps: Optional[int], max_tokens: Optional[int],
                   max_time: Optional[str]) -> Optional[int]:
    """The steps the lr schedule spans, or None to place it by budget fraction: a run bounded by
    tokens or time cannot know its step count, so warmup and decay follow the budget used."""
    if schedule_total_steps:
        return int(schedule_total_steps)
    if max_tokens is None and max_time is None:
        return max_steps
    return None


def slurm_job_ref(env) -> Optional[str]:
    """How SLURM commands name this job: `<array job>_<task>` inside an array (the bare array
    job id would address every task of the array), else SLURM_JOB_ID; None outside SLURM."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def parse_time_left(text: str) -> Optional[float]:
    """`squeue -o %L` output -> seconds; None when there is no limit or SLURM cannot say
    (UNLIMITED, NOT_SET, INVALID, empty). Raises ValueError on anything else."""
    from pretrain.train.config import ConfigError, parse_slurm_time

    text = (text or "").strip()
    if not text or text.upper() in ("NOT_SET", "INVALID", "N/A"):
        return None
    try:
        return parse_slurm_time(text, key="squeue %L")
    except ConfigError:
        raise ValueError(f"unexpected squeue time left {text!r}") from None


def squeue_time_left(job_ref: str, timeout: float = 15.0) -> Optional[float]:
    import subprocess

    result = subprocess.run(["squeue", "-h", "-j", job_ref, "-o", "%L"], capture_output=True, text=True,
                            timeout=timeout)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise OSError((result.stderr.strip().splitlines() or [f"squeue exit code {result.returncode}"])[0])
    return parse_time_left(lines[0])


class JobDeadline:
    """The SLURM safety net: true once the job has less than `margin` seconds left.

    Asks `squeue -h -j <job> -o %L` at most every `poll_every` seconds (one process per job calls
    this; a per-step query would load slurmctld) and counts down in between. Where squeue is not
    available (inside a container) it counts down from the time left the batch script saw at
    start (PRETRAIN_JOB_TIME_LEFT at PRETRAIN_JOB_TIME_LEFT_AT). Never raises: a failed query keeps
    the last estimate, and no estimate means no deadline.
    """

    def __init__(self, job_ref: str, margin: float, poll_every: float = 60.0, query=None,
                 fallback: Optional[tuple[str, float]] = None, clock=time.time, log=print):
        import shutil

        self.job_ref, self.margin, self.poll_every = job_ref, float(margin), float(poll_every)
        self._query = query if query is not None else (squeue_time_left if shutil.which("squeue") else None)
        self._fallback, self._clock, self._log = fallback, clock, log
        self._left: Optional[float] = None      # seconds left at _seen_at
        self._seen_at = 0.0
        self._next_poll = float("-inf")
        self._said: set[str] = set()

    @classmethod
    def from_env(cls, cluster, env=None, log=print) -> Optional["JobDeadline"]:
        """The deadline of the SLURM job this process runs in; None outside SLURM or with
        cluster.time_margin = 0."""
        import os

        env = os.environ if env is None else env
        job_ref = slurm_job_ref(env)
        if job_ref is None or not cluster.time_margin:
            return None
        fallback = None
        if env.get("PRETRAIN_JOB_TIME_LEFT") and env.get("PRETRAIN_JOB_TIME_LEFT_AT"):
            try:
                fallback = (env["PRETRAIN_JOB_TIME_LEFT"], float(env["PRETRAIN_JOB_TIME_LEFT_AT"]))
            except ValueError:
                fallback = None
        return cls(job_ref, cluster.time_margin, cluster.time_poll, fallback=fallback, log=log)

    def _once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self._log(message)

    def _poll(self, now: float) -> None:
        self._next_poll = now + self.poll_every
        if self._query is not None:
            try:
                self._left, self._seen_at = self._query(self.job_ref), now
                how = f"squeue, every {self.poll_every:.0f}s"
            except Exception as e:  # unreachable controller, timeout, odd output: keep the estimate
                self._once("query-failed", f"warning: cannot read the SLURM job's time left ({e}); "
                                           "keeping the last estimate")
                return
        elif self._fallback is not None:
            text, seen_at = self._fallback
            try:
                self._left, self._seen_at = parse_time_left(text), seen_at
            except ValueError as e:
                self._left = None
                self._once("fallback-bad", f"warning: {e}; no SLURM time-limit safety net")
            self._fallback = None
            self._query = None
            how = "the batch script's squeue at job start (no squeue here)"
        else:
            self._once("none", "warning: squeue not found and no time left from the batch script; "
                               "no SLURM time-limit safety net")
            return
        if self._left is None:
            self._once("unlimited", f"SLURM job {self.job_ref}: no time limit known; no safety net needed")
        else:
            self._once("first", f"SLURM job {self.job_ref}: {self._left:.0f}s left ({how}); checkpointing "
                                f"and stopping when less than cluster.time_margin={self.margin:.0f}s remain")

    def seconds_left(self) -> Optional[float]:
        now = self._clock()
        if now >= self._next_poll:
            self._poll(now)
        if self._left is None:
            return None
        return self._left - (now - self._seen_at)

    def near(self) -> bool:
        left = self.seconds_left()
        if left is None or left >= self.margin:
            return False
        self._once("near", f"SLURM job {self.job_ref} has about {max(left, 0):.0f}s left (< cluster.time_margin="
                           f"{self.margin:.0f}s): checkpointing and stopping, so the job can be requeued")
        return True
