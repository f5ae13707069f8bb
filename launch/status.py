"""`pretrain-status runs/<name>`: where a run stands, local or SLURM.

Prints the run's progress (finished or not, newest complete checkpoint, last logged metrics)
and, for a SLURM run, each of its jobs as slurmctld sees it now (state, requeues, time used and
left, nodes) with the log path and a ready-to-paste cancel command. Reads only files in the run
directory and asks scontrol; it changes nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

PROG = "pretrain-status"
# The trainer's own; the objective's `shown` metrics (objective.json) go after each loss.
TRAIN_SHOWN = ("train/loss", "train/lr", "train/tokens_per_s")
EVAL_SHOWN = ("eval/loss",)


def shown_metrics(run) -> list[str]:
    """train/loss, the objective's shown train metrics, lr, tokens/s, eval/loss, its shown eval
    metrics (an older run without objective.json: its logged *_acc metrics)."""
    from pretrain.tracking.reader import objective_metrics

    if run.objective:
        mine = list(run.objective.get("shown", []))
        train, evals = [f"train/{m}" for m in mine], [f"eval/{m}" for m in mine]
    else:
        train = [m for m in objective_metrics(run, "train") if m.endswith("_acc")]
        evals = [m for m in objective_metrics(run, "eval") if m.endswith("_acc")]
    return [TRAIN_SHOWN[0], *train, *TRAIN_SHOWN[1:], *EVAL_SHOWN, *evals]


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds / 3600:.1f} h ago"


def progress_lines(run_dir: str, cfg) -> list[tuple[str, str]]:
    from pretrain.train.checkpoint_manager import CheckpointManager
    from pretrain.train.rundir import read_finished
    from pretrain.tracking.reader import MetricsError, read_run

    rows = []
    finished = read_finished(run_dir)
    budget = ", ".join(f"{k}={cfg.trainer[k]}" for k in ("max_steps", "max_tokens", "max_time")
                       if cfg.trainer.get(k) is not None)
    if finished:
        rows.append(("state", f"finished at step {finished.get('step')} ({finished.get('reason')}), "
                              f"{_ago(time.time() - finished.get('time', time.time()))}"))
    else:
        rows.append(("state", f"not finished (budget: {budget or '?'})"))
    warnings: list[str] = []
    candidates = CheckpointManager(run_dir, log=warnings.append).complete()
    if candidates:
        newest = candidates[0]
        step = int(os.path.basename(newest).split("_")[1])
        rows.append(("checkpoint", f"step {step} ({newest}), saved {_ago(time.time() - os.path.getmtime(newest))}"))
    else:
        rows.append(("checkpoint", "none complete yet"))
    for w in warnings:
        rows.append(("", w))
    try:
        run = read_run(run_dir, max_points=2)
    except MetricsError as e:
        rows.append(("metrics", str(e)))
    else:
        shown = [f"{k}={run.last[k][1]:.4g}" for k in shown_metrics(run) if k in run.last]
        rows.append(("metrics", f"last logged step {run.last_step}: {' '.join(shown) or '(no known metrics)'}"))
        phases = cfg.trainer.get("phases") or []
        if phases and "train/phase" in run.last:
            k = int(run.last["train/phase"][1])
            name = phases[k - 1].get("name") or f"phase{k}"
            rows.append(("phase", f"{k}/{len(phases)} ({name}) at step {run.last['train/phase'][0]}"))
        mtime = os.path.getmtime(run.path)
        rows.append(("", f"{run.path} updated {_ago(time.time() - mtime)}"))
    return rows


def job_lines(run_dir: str, cfg) -> list[tuple[str, str]]:
    from launch.slurm_jobs import ACTIVE_STATES, have_scontrol, job_info, known_job_ids

    jobs = known_job_ids(run_dir)
    if not jobs:
        return [("jobs", "none recorded")]
    if not have_scontrol():
        return [("jobs", f"{', '.join(jobs)} (scontrol not found: cannot ask SLURM about them)")]
    rows, active = [], []
    for job in jobs:
        try:
            info = job_info(job)
        except Exception as e:  # controller down, timeout
            rows.append((f"job {job}", f"unknown ({e})"))
            continue
        if info is None:
            rows.append((f"job {job}", "no longer known to slurmctld (ended before MinJobAge); see its log"))
            continue
        state = info.get("JobState", "?")
        if state in ACTIVE_STATES:
            active.append(job)
        restarts = info.get("Restarts", "0")
        parts = [state]
        if info.get("Reason") not in (None, "None"):
            parts.append(f"reason {info['Reason']}")
        parts.append(f"requeued {restarts} time(s) (cluster.max_requeues={cfg.cluster.max_requeues})")
        if info.get("RunTime"):
            parts.append(f"ran {info['RunTime']} of {info.get('TimeLimit', '?')}")
        if info.get("NodeList") not in (None, "", "(null)"):
            parts.append(f"nodes {info['NodeList']}")
        if info.get("Dependency") not in (None, "(null)"):
            parts.append(f"after {info['Dependency']}")
        if info.get("ExitCode") not in (None, "0:0") and state not in ACTIVE_STATES:
            parts.append(f"exit code {info['ExitCode']}")
        rows.append((f"job {job}", ", ".join(parts)))
        log = os.path.join(run_dir, "logs", f"slurm-{job}.out")
        if os.path.exists(log):
            rows.append(("", f"log {log}"))
    if active:
        rows.append(("cancel", f"scancel {' '.join(active)}"))
    return rows


def status_lines(run_dir: str) -> list[tuple[str, str]]:
    from pretrain.train.rundir import load_raw_config

    cfg = load_raw_config(run_dir)
    c = cfg.cluster
    rows = [("run", f"{os.path.abspath(run_dir)} (cluster={c.kind}, {c.nnodes} node(s) x {c.nproc} process(es))")]
    rows += progress_lines(run_dir, cfg)
    if c.kind == "slurm" or os.path.isdir(os.path.join(run_dir, "slurm")):
        rows += job_lines(run_dir, cfg)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="runs/<name> made by pretrain-launch")
    args = parser.parse_args(argv)
    from launch.errors import one_line_errors

    with one_line_errors(PROG):
        rows = status_lines(args.run_dir)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
