"""A run's SLURM jobs: which were submitted and started (recorded in the run directory), and what
slurmctld says about them now (scontrol). Used by the launcher, the job setup step and
`pretrain-status`.

    runs/<name>/slurm/jobs.jsonl       one line per sbatch (launcher): job id, dependency, time
    runs/<name>/slurm/attempts.jsonl   one line per attempt (job setup step): job id, restart count, nodes
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from typing import Optional

JOBS_FILE = os.path.join("slurm", "jobs.jsonl")
ATTEMPTS_FILE = os.path.join("slurm", "attempts.jsonl")
# States in which a job still holds or may again hold the run directory.
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "CONFIGURING",
                 "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}
_FIELD = re.compile(r"(\w[\w/:.]*)=(\S*)")


def _append(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: str) -> list[dict]:
    """Records of a jobs/attempts file; a torn or foreign line is skipped, a missing file is []."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
    except FileNotFoundError:
        pass
    return out


def record_submission(run_dir: str, job_id: str, dependency: Optional[str] = None) -> None:
    _append(os.path.join(run_dir, JOBS_FILE),
            {"job_id": str(job_id), "dependency": dependency, "submitted": time.time()})


def record_attempt(run_dir: str, env) -> dict:
    record = {
        "job_id": env.get("SLURM_JOB_ID"),
        "array": f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}" if env.get("SLURM_ARRAY_JOB_ID") else None,
        "restart_count": int(env.get("SLURM_RESTART_COUNT") or 0),
        "nodes": env.get("SLURM_JOB_NODELIST"),
        "master_addr": env.get("MASTER_ADDR"),
        "started": time.time(),
    }
    _append(os.path.join(run_dir, ATTEMPTS_FILE), record)
    return record


def known_job_ids(run_dir: str) -> list[str]:
    """Every job id this run was submitted or started as, oldest first, each once."""
    ids: list[str] = []
    for name in (JOBS_FILE, ATTEMPTS_FILE):
        for rec in read_jsonl(os.path.join(run_dir, name)):
            job = str(rec.get("job_id") or "")
            if job and job not in ids:
                ids.append(job)
    return sorted(ids, key=lambda j: (len(j), j))


def have_scontrol() -> bool:
    return shutil.which("scontrol") is not None


def job_info(job_id: str, timeout: float = 20.0) -> Optional[dict]:
    """`scontrol show job -o <id>` as a dict (JobState, Restarts, RunTime, TimeLimit, NodeList,
    Reason, ExitCode ...); None when slurmctld no longer knows the job (older than MinJobAge)."""
    result = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return None
        raise OSError(f"scontrol show job {job_id}: {(result.stderr.strip().splitlines() or ['failed'])[0]}")
    info: dict = {}
    for key, value in _FIELD.findall(result.stdout):
        info.setdefault(key, value)
    return info or None


def active_jobs(run_dir: str) -> list[tuple[str, str]]:
    """(job id, state) of this run's jobs that are still pending or running."""
    out = []
    for job in known_job_ids(run_dir):
        info = job_info(job)
        if info and info.get("JobState") in ACTIVE_STATES:
            out.append((job, info["JobState"]))
    return out
