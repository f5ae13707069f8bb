"""cluster=slurm: render slurm/pretrain.sbatch into runs/<name>/slurm/job.sbatch and submit it.

The job (see the template) runs, per attempt: a setup step on the first node
(launch/slurm_setup.py), then one task per node running that node's agent (launch/slurm_node.py:
torchrun for the node's ranks). The batch shell traps the checkpoint signal, forwards it to the
ranks, and afterwards requeues the job unless the run finished, at most cluster.max_requeues
times. `cluster.chain=N` submits N such jobs, each starting after the previous ends (afterany).
A sweep (-m) submits one job per combination, each with its own run directory (docs/slurm.md).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from importlib import resources

from omegaconf import DictConfig

from launch.slurm_jobs import active_jobs, record_submission
from pretrain.train.rundir import FINISHED_NAME

PROG = "pretrain-launch"
TEMPLATE = "pretrain.sbatch"
SCRIPT = os.path.join("slurm", "job.sbatch")
# #SBATCH options the launcher sets from typed keys: cluster.extra_sbatch may not set them again.
SBATCH_OWNED = {
    "nodes": "cluster.nnodes", "N": "cluster.nnodes", "ntasks": "cluster.nnodes", "n": "cluster.nnodes",
    "ntasks-per-node": "cluster.nnodes (one task per node runs its agent)",
    "output": "the run directory (logs/slurm-%j.out)", "o": "the run directory (logs/slurm-%j.out)",
    "error": "the run directory (logs/slurm-%j.out)", "e": "the run directory (logs/slurm-%j.out)",
    "open-mode": "the launcher (append)", "signal": "cluster.signal and cluster.signal_grace",
    "requeue": "cluster.max_requeues", "no-requeue": "cluster.max_requeues", "chdir": "the launcher",
    "D": "the launcher", "time": "cluster.time", "t": "cluster.time", "partition": "cluster.partition",
    "p": "cluster.partition", "account": "cluster.account", "A": "cluster.account", "qos": "cluster.qos",
    "q": "cluster.qos", "mem": "cluster.mem", "cpus-per-task": "cluster.cpus_per_task",
    "c": "cluster.cpus_per_task", "gpus-per-node": "cluster.gpus_per_node", "constraint": "cluster.constraint",
    "C": "cluster.constraint", "exclusive": "cluster.exclusive", "exclude": "cluster.exclude",
    "x": "cluster.exclude", "job-name": "run.name", "J": "run.name",
    "array": "a sweep (-m): one job per run directory", "a": "a sweep (-m): one job per run directory",
    "dependency": "cluster.chain", "d": "cluster.chain",
}
_OPTION = re.compile(r"^(?:#SBATCH\s+)?(--?)([A-Za-z][\w-]*)(?:[= ](.*))?$")


def _error(msg: str):
    from pretrain.train.config import ConfigError

    return ConfigError(msg)


def extra_sbatch_lines(cfg: DictConfig) -> list[str]:
    """cluster.extra_sbatch as `--option[=value]` strings; options the launcher owns are refused."""
    out = []
    for i, raw in enumerate(cfg.cluster.extra_sbatch):
        text = str(raw).strip()
        m = _OPTION.match(text)
        if m is None:
            raise _error(f"config key 'cluster.extra_sbatch[{i}]' = {raw!r}; expected an sbatch option like "
                         "'--reservation=big'")
        name = m.group(2)
        if name in SBATCH_OWNED:
            raise _error(f"config key 'cluster.extra_sbatch[{i}]' = {raw!r}: --{name} is set by {SBATCH_OWNED[name]}")
        out.append(text[len("#SBATCH"):].strip() if text.startswith("#SBATCH") else text)
    return out


def _one_word(cfg: DictConfig, key: str) -> str | None:
    value = cfg.cluster[key]
    if value is None:
        return None
    text = str(value).strip()
    if re.search(r"\s", text):
        raise _error(f"config key 'cluster.{key}' = {value!r}; SLURM values cannot contain spaces")
    return text


def sbatch_options(cfg: DictConfig, run_dir: str, cwd: str) -> list[str]:
    c = cfg.cluster
    opts = [f"--job-name={cfg.run.name.replace('/', '-')}", f"--nodes={c.nnodes}", "--ntasks-per-node=1"]
    for key, flag in (("cpus_per_task", "cpus-per-task"), ("mem", "mem"), ("time", "time"),
                      ("partition", "partition"), ("account", "account"), ("qos", "qos"),
                      ("constraint", "constraint"), ("exclude", "exclude")):
        value = _one_word(cfg, key)
        if value is not None:
            opts.append(f"--{flag}={value}")
    if c.exclusive:
        opts.append("--exclusive")
    if c.gpus_per_node:
        opts.append(f"--gpus-per-node={c.gpus_per_node}")
    opts += [
        f"--signal=B:{c.signal}@{c.signal_grace}",
        "--requeue" if c.max_requeues > 0 else "--no-requeue",
        "--open-mode=append",
        f"--output={os.path.join(run_dir, 'logs', 'slurm-%j.out')}",
        f"--chdir={cwd}",
    ]
    return opts + extra_sbatch_lines(cfg)


def step_flags(cfg: DictConfig) -> list[str]:
    """Flags for every srun of the job: CPUs (srun does not inherit sbatch's --cpus-per-task on
    every SLURM version) and the pyxis container."""
    c = cfg.cluster
    flags = [f"--cpus-per-task={c.cpus_per_task}"] if c.cpus_per_task else []
    if c.container.image:
        flags.append(f"--container-image={c.container.image}")
        if c.container.mounts:
            flags.append(f"--container-mounts={','.join(str(m) for m in c.container.mounts)}")
        if c.container.workdir:
            flags.append(f"--container-workdir={c.container.workdir}")
        flags += [str(f) for f in c.container.extra]
    return flags


def node_python(cfg: DictConfig) -> str:
    """The interpreter the job runs: cluster.python, else this one (the same venv on a shared
    filesystem); inside a container this machine's path means nothing, so `python3` there."""
    if cfg.cluster.python:
        return str(cfg.cluster.python)
    return "python3" if cfg.cluster.container.image else sys.executable


def render(cfg: DictConfig, run_dir: str, cwd: str | None = None, python: str | None = None) -> str:
    """The job script for this run (pure: paths are parameters so golden tests are stable)."""
    cwd = cwd or os.getcwd()
    python = python or node_python(cfg)
    script = os.path.join(run_dir, SCRIPT)
    q = shlex.quote
    values = {
        "header": f"Rendered by pretrain-launch from slurm/{TEMPLATE} for {run_dir}. "
                  f"Resubmit (same config): sbatch {script}",
        "sbatch_options": "\n".join(f"#SBATCH {o}" for o in sbatch_options(cfg, run_dir, cwd)),
        "run_name": cfg.run.name,
        "run_dir": q(run_dir),
        "signal": cfg.cluster.signal,
        "max_requeues": str(cfg.cluster.max_requeues),
        "setup": "\n".join(str(line) for line in cfg.cluster.setup) or "# (no cluster.setup lines)",
        "environment": "\n".join(f"export {k}={q(str(v))}" for k, v in cfg.cluster.env.items())
                       or "# (no cluster.env variables)",
        "finished_name": FINISHED_NAME,
        # Optional flags carry their own leading space, so none leave a double space behind.
        "step_flags": "".join(" " + q(f) for f in step_flags(cfg)) + (
            # one container per job, reused by the setup and the ranks' steps (no second import)
            ' --container-name=pretrain-"${SLURM_JOB_ID}"' if cfg.cluster.container.image else ""),
        "srun_args": "".join(" " + q(str(a)) for a in cfg.cluster.srun_args),
        "python": q(python),
        "nnodes": str(cfg.cluster.nnodes),
        "resubmit": f"sbatch {script}",
    }
    text = resources.files("slurm").joinpath(TEMPLATE).read_text()

    def fill(m: re.Match) -> str:
        return values[m.group(1)]  # a KeyError here is a template bug, not a user error

    return re.sub(r"\{\{(\w+)\}\}", fill, text)


def _sbatch(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["sbatch", *args], capture_output=True, text=True, timeout=timeout)


def test_only(script_path: str) -> str | None:
    """`sbatch --test-only`: would SLURM accept this job (partition, account, sizes)? Returns its
    one-line verdict; raises a one-line ConfigError when SLURM refuses."""
    result = _sbatch(["--test-only", script_path])
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    if result.returncode != 0:
        if any("unrecognized option" in line for line in lines):
            return None  # this sbatch has no --test-only
        raise _error(f"cluster: sbatch --test-only refused the job: {'; '.join(lines[-2:]) or 'no reason given'}")
    return lines[-1] if lines else None


def _test_rendered(text: str) -> str | None:
    with tempfile.NamedTemporaryFile("w", suffix=".sbatch", delete=False) as f:
        f.write(text)
    try:
        return test_only(f.name)
    finally:
        os.unlink(f.name)


class SlurmLauncher:
    def __init__(self):
        self.verdict: str | None = None  # sbatch --test-only's answer, from check()

    def check(self, cfg: DictConfig, submit: bool) -> None:
        extra_sbatch_lines(cfg)
        for key in ("partition", "account", "qos", "constraint", "exclude", "time", "mem"):
            _one_word(cfg, key)
        if cfg.cluster.container.image and not cfg.cluster.container.mounts:
            raise _error("config key 'cluster.container.mounts' is empty: mount the run directory and the data "
                         "into the container (e.g. cluster.container.mounts=[/shared:/shared])")
        if not submit:
            return
        if shutil.which("sbatch") is None:
            raise _error("config key 'cluster.kind' = 'slurm' but sbatch is not on PATH; run pretrain-launch on a "
                         "SLURM login node (run.dry_run=true renders the job script anywhere)")
        from launch.rundir import run_dir_path

        run_dir = run_dir_path(cfg)
        live = active_jobs(run_dir) if os.path.isdir(run_dir) else []
        if live:
            jobs = ", ".join(f"{job} ({state})" for job, state in live)
            raise _error(f"run {cfg.run.name!r} already has SLURM job {jobs}; wait for it or "
                         f"scancel {' '.join(job for job, _ in live)} before launching it again")
        self.verdict = _test_rendered(render(cfg, run_dir))  # before anything is written


    def describe(self, cfg: DictConfig, run_dir: str) -> str:
        text = render(cfg, run_dir)
        script = os.path.join(run_dir, SCRIPT)
        lines = [f"--- {script} ---", text.rstrip(), "---", f"would run: sbatch --parsable {script}"]
        for i in range(1, cfg.cluster.chain):
            lines.append(f"would run: sbatch --parsable --dependency=afterany:<job {i}> {script}")
        if shutil.which("sbatch"):
            try:
                verdict = _test_rendered(text)
            except ValueError as e:  # ConfigError: a dry run reports it and goes on
                verdict = str(e).replace("cluster: sbatch --test-only ", "")
            if verdict:
                lines.append(f"sbatch --test-only: {verdict}")
        return "\n".join(lines)

    def launch(self, cfg: DictConfig, run_dir: str) -> int:
        script = os.path.join(run_dir, SCRIPT)
        os.makedirs(os.path.dirname(script), exist_ok=True)
        with open(script, "w") as f:
            f.write(render(cfg, run_dir))
        verdict = self.verdict
        jobs: list[str] = []
        for _ in range(cfg.cluster.chain):
            dependency = f"afterany:{jobs[-1]}" if jobs else None
            args = ["--parsable", *([f"--dependency={dependency}"] if dependency else []), script]
            result = _sbatch(args)
            if result.returncode != 0:
                why = (result.stderr.strip().splitlines() or ["no reason given"])[-1]
                done = f" (already submitted: {', '.join(jobs)})" if jobs else ""
                print(f"{PROG}: error: sbatch failed: {why}{done}", file=sys.stderr, flush=True)
                return 1
            job = result.stdout.strip().split(";")[0]
            record_submission(run_dir, job, dependency)
            jobs.append(job)
        c = cfg.cluster
        where = ", ".join(f"{k} {c[k]}" for k in ("partition", "account", "time") if c[k]) or "site defaults"
        chain = "".join(f"\n               job {j} after {p} (afterany)" for p, j in zip(jobs, jobs[1:]))
        print(
            f"run directory: {run_dir}\n"
            f"job script:    {script}\n"
            f"submitted:     job {jobs[0]} ({c.nnodes} node(s) x {c.nproc} process(es); {where}){chain}\n"
            + (f"sbatch --test-only: {verdict}\n" if verdict else "")
            + f"log:           {os.path.join(run_dir, 'logs', f'slurm-{jobs[0]}.out')} (appended across requeues)\n"
            f"status:        pretrain-status {run_dir}\n"
            f"cancel:        scancel {' '.join(jobs)}",
            flush=True,
        )
        return 0
