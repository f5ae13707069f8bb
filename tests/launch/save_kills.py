"""Kill -9 the ranks at many moments inside a checkpoint save; every relaunch must resume from a
complete checkpoint with the losses of an uninterrupted run.

    python tests/launch/save_kills.py --data DIR --work DIR [--kills 30] [--seed 0] [--layout zero2-bf16]

Writes WORK/report.json ({"failures": [...], ...}); used by test_save_kills.py (30 kills) and
bench/save_kills.py (more kills, every layout). Exit code 1 when any check failed.

How it stays cheap (measured on 2 shared cores: a relaunch that resumes, trains a step and saves
costs ~2 CPU-seconds for both ranks here, ~24 through pretrain-launch + torchrun, which re-import
torch, DeepSpeed, Hydra and torch._dynamo in every process):
- Fork server. This process imports torch, DeepSpeed and the trainer once, never computes, and
  forks the two rank processes of every launch; each child sets what torchrun would (RANK,
  WORLD_SIZE, MASTER_*), then runs launch.worker.main, the entry point torchrun runs. The modules
  a rank imports lazily (torch._dynamo etc., seen in the first launch) are imported here before
  the fuzz launches fork.
- Kill points without touching product code. In each child, the file operations under
  <run>/checkpoints made inside CheckpointManager.save are events numbered per save: mkdir,
  torch.save (file created / a seeded fraction of its bytes written / complete), open for
  writing, fsync, os.replace (before / after), and retention's rmtree (before, each unlink and
  rmdir, after). A kill point is a (rank, event name) of a steady-state save. At the chosen event the rank SIGKILLs its process group: both ranks die at
  once (the other one wherever it happens to be). The reference run records both ranks' events.
- Many saves per launch: one checkpoint per step, keep 2 (so every save prunes).
Checks, for every kill: both ranks died of SIGKILL inside the save; `latest` names the new step
if the kill came after its publication, else the previous one; that checkpoint is complete; the
relaunch says it resumed from it; every loss in metrics.jsonl equals the reference run's.
"""
from __future__ import annotations

import argparse
import builtins
import io
import json
import os
import random
import shutil
import signal
import socket
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORLD = 2
LAYOUTS = {
    "zero0-fp32": ["parallel=ddp", "precision=fp32"],
    "zero1-bf16": ["parallel=zero1", "precision=bf16"],
    "zero2-bf16": ["parallel=zero2", "precision=bf16"],
    "zero3-fp32": ["parallel=zero3", "precision=fp32"],
}
PUBLISHED = "replace-after:latest"  # rank 0's event from which the new checkpoint is `latest`


# ----------------------------------------------------------------------------------- in a rank
class SaveEvents:
    """Installed in a rank process: numbers the file operations of each save, may kill at one."""

    def __init__(self, root: str, rank: int, record: str | None, target: dict | None, marker: str):
        self.root, self.rank, self.target, self.marker = root, rank, target, marker
        self.record = record.format(rank=rank) if record else None
        self.step = None  # the step being saved, None outside CheckpointManager.save
        self.index = 0
        self.seen: dict[str, int] = {}
        self.real = {"open": builtins.open, "replace": os.replace, "fsync": os.fsync, "mkdir": os.mkdir,
                     "unlink": os.unlink, "rmdir": os.rmdir, "rmtree": shutil.rmtree}

    def _under(self, path) -> bool:
        try:
            return os.path.abspath(os.fspath(path)).startswith(self.root + os.sep)
        except TypeError:
            return False

    def _name(self, path) -> str:
        rel = os.path.relpath(os.path.abspath(os.fspath(path)), self.root).split(os.sep)
        if rel[0] == f"step_{self.step:06d}":
            return "/".join(["cur", *rel[1:]])
        if rel[0].startswith("step_"):
            return "/".join(["old", *rel[1:]])
        return "/".join(rel)

    def event(self, kind: str, path) -> None:
        """Number (and record) one file operation of the current save; kill if it is the target."""
        if self.step is None or not self._under(path):
            return
        key, i = f"{kind}:{self._name(path)}", self.index
        self.index += 1
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.seen[key] > 1:  # e.g. DeepSpeed makes the step directory once per file
            key = f"{key}#{self.seen[key]}"
        if self.record:
            with self.real["open"](self.record, "a") as f:
                f.write(json.dumps({"step": self.step, "i": i, "key": key}) + "\n")
        t = self.target
        if t and t["rank"] == self.rank and t["key"] == key:  # by name: the index may shift by a leftover's cleanup
            self.kill(key, i)

    def kill(self, key: str, i: int) -> None:
        with self.real["open"](self.marker, "w") as f:
            json.dump({"rank": self.rank, "step": self.step, "i": i, "key": key}, f)
            f.flush()
            self.real["fsync"](f.fileno())
        os.killpg(os.getpgrp(), signal.SIGKILL)

    def install(self) -> None:
        import torch

        from pretrain.train.checkpoint_manager import CheckpointManager

        ev, real = self, self.real
        real_save, real_manager_save = torch.save, CheckpointManager.save

        def manager_save(manager, engine, step, client_state):
            ev.step, ev.index, ev.seen = step, 0, {}
            try:
                return real_manager_save(manager, engine, step, client_state)
            finally:
                ev.step = None

        def save(obj, f, *args, **kwargs):
            if not isinstance(f, (str, os.PathLike)) or ev.step is None or not ev._under(f):
                return real_save(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            with real["open"](f, "wb") as out:
                ev.event("create", f)
                cut = ev._peek_part(f)  # a seeded fraction when this file's `part` is the kill point
                out.write(data[:int(len(data) * (0.5 if cut is None else cut))])
                out.flush()
                ev.event("part", f)
                out.write(data[int(len(data) * (0.5 if cut is None else cut)):])
            ev.event("written", f)

        def open_(file, mode="r", *args, **kwargs):
            handle = real["open"](file, mode, *args, **kwargs)
            if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
                ev.event("open", file)
            return handle

        def fsync(fd):
            real["fsync"](fd)
            try:
                ev.event("fsync", os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}"))
            except OSError:
                pass

        def replace(src, dst, *args, **kwargs):
            ev.event("replace-before", dst)
            real["replace"](src, dst, *args, **kwargs)
            ev.event("replace-after", dst)

        def mkdir(path, *args, **kwargs):
            ev.event("mkdir", path)  # before: both ranks try, one of them finds it made already
            real["mkdir"](path, *args, **kwargs)

        def in_dir(path, dir_fd):
            return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path) if dir_fd is not None else path

        def unlink(path, *args, dir_fd=None, **kwargs):
            ev.event("unlink", in_dir(path, dir_fd))
            real["unlink"](path, *args, dir_fd=dir_fd, **kwargs)

        def rmdir(path, *args, dir_fd=None, **kwargs):
            ev.event("rmdir", in_dir(path, dir_fd))
            real["rmdir"](path, *args, dir_fd=dir_fd, **kwargs)

        def rmtree(path, *args, **kwargs):
            ev.event("rmtree-before", path)
            real["rmtree"](path, *args, **kwargs)
            ev.event("rmtree-after", path)

        CheckpointManager.save = manager_save
        torch.save, builtins.open, os.fsync, os.replace = save, open_, fsync, replace
        os.mkdir, os.unlink, os.remove, os.rmdir, shutil.rmtree = mkdir, unlink, unlink, rmdir, rmtree

    def _peek_part(self, path) -> float | None:
        """The kill fraction if the *next* event (this file's `part`) is the target."""
        t = self.target
        if t and t["rank"] == self.rank and t["key"].split("#")[0] == f"part:{self._name(path)}":
            return t["fraction"]
        return None


# ------------------------------------------------------------------------------- fork server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, leader: int, port: int, run_dir: str, log: str, hooks: dict, modules_out: str | None):
    code = 1
    try:
        os.setpgid(0, leader)
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD),
                          GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        before = set(sys.modules)
        SaveEvents(os.path.join(run_dir, "checkpoints"), rank, **hooks).install()
        import launch.worker

        code = launch.worker.main([run_dir])
        if modules_out:
            with open(modules_out, "w") as f:
                f.write("\n".join(sorted(set(sys.modules) - before)))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def fork_launch(run_dir: str, tag: str, hooks: dict, timeout: float, modules_out: str | None = None) -> dict:
    """Fork the ranks of one launch and wait; returns exit statuses and rank 0's log."""
    port = free_port()
    logs = [os.path.join(run_dir, "logs", f"fork-{tag}-rank{r}.log") for r in range(WORLD)]
    pids: list[int] = []
    for rank in range(WORLD):
        pid = os.fork()
        if pid == 0:
            _child(rank, pids[0] if pids else 0, port, run_dir, logs[rank], hooks, modules_out if rank == 0 else None)
        try:
            os.setpgid(pid, pids[0] if pids else pid)
        except OSError:  # the child got there first
            pass
        pids.append(pid)
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(statuses) < WORLD:
        for pid in pids:
            if pid not in statuses:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    statuses[pid] = status
        if time.monotonic() > deadline:
            os.killpg(pids[0], signal.SIGKILL)
            for pid in pids:
                if pid not in statuses:
                    statuses[pid] = os.waitpid(pid, 0)[1]
            return {"timeout": True, "signals": [], "codes": [], "log": _read(logs[0])}
        time.sleep(0.02)
    status = [statuses[p] for p in pids]
    return {"timeout": False, "log": _read(logs[0]) + _read(logs[1])[-2000:],
            "signals": [os.WTERMSIG(s) if os.WIFSIGNALED(s) else None for s in status],
            "codes": [os.WEXITSTATUS(s) if os.WIFEXITED(s) else None for s in status]}


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


# ----------------------------------------------------------------------------------- checks
def losses(run_dir: str) -> dict[int, float]:
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            if line.endswith("\n"):
                rec = json.loads(line)
                if "train/loss" in rec:
                    out[rec["step"]] = rec["train/loss"]
    return out


def make_run_dirs(args, steps: int) -> tuple[str, str]:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from launch.preflight import preflight
    from launch.rundir import prepare_run_dir
    from pretrain.train.config import validate

    dirs = []
    for name in ("reference", "killed"):
        overrides = [
            f"run.root={args.work}", f"run.name={name}", f"data.path={args.data}", "model=bert-tiny",
            "data.micro_batch_size=4", "data.num_workers=0", "data.max_seq_len=32", f"cluster.nproc={WORLD}",
            *LAYOUTS[args.layout], f"trainer.max_steps={steps}", "trainer.checkpoint_every=1",
            "trainer.keep_checkpoints=2", "trainer.log_every=1", "trainer.eval_every=0", "trainer.progress=false",
            "trainer.export_on_finish=false", "trainer.peak_flops=1e12", "tracker=none", "optim.lr=1e-3",
            "schedule.warmup_steps=2"]
        with initialize_config_module(config_module="conf", version_base="1.3"):
            raw = OmegaConf.to_container(compose(config_name="train", overrides=overrides))
        raw.pop("hydra", None)
        cfg = validate(raw)
        preflight(cfg)
        dirs.append(prepare_run_dir(cfg))
    return dirs[0], dirs[1]


def plan_kills(events: dict[int, list[str]], kills: int, seed: int) -> list[dict]:
    """`kills` (rank, event) points: every event of a save once per round, rounds shuffled by seed."""
    rng = random.Random(seed)
    positions = [(rank, i, key) for rank, keys in events.items() for i, key in enumerate(keys)]
    plan: list[dict] = []
    while len(plan) < kills:
        batch = positions[:]
        rng.shuffle(batch)
        plan += [{"rank": r, "i": i, "key": k, "fraction": round(rng.uniform(0.02, 0.98), 3)} for r, i, k in batch]
    return plan[:kills]


def census(work: str, steps: int) -> dict[int, list[str]]:
    """Each rank's events in the reference run's last save (a steady-state save: it prunes)."""
    out = {}
    for rank in range(WORLD):
        with open(os.path.join(work, f"events-rank{rank}.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        out[rank] = [r["key"] for r in rows if r["step"] == steps]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--kills", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", default="zero2-bf16", choices=sorted(LAYOUTS))
    p.add_argument("--timeout", type=float, default=300.0, help="per launch, seconds")
    args = p.parse_args(argv)
    args.work = os.path.abspath(args.work)
    os.makedirs(args.work, exist_ok=True)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    t0 = time.monotonic()
    steps = args.kills + 3  # a launch advances at most one checkpoint before it is killed
    reference, killed = make_run_dirs(args, steps)
    import deepspeed  # noqa: F401 - imported once, here: the forks inherit it
    import torch  # noqa: F401

    import launch.worker  # noqa: F401
    import parallel.ds_engine  # noqa: F401
    import pretrain.train.loop  # noqa: F401

    failures: list[str] = []
    modules = os.path.join(args.work, "modules.txt")
    record = os.path.join(args.work, "events-rank{rank}.jsonl")
    started = time.monotonic()
    ref = fork_launch(reference, "ref", {"record": record, "target": None, "marker": os.devnull}, args.timeout, modules)
    reference_seconds = round(time.monotonic() - started, 1)
    if ref["codes"] != [0, 0]:
        return _report(args, t0, [f"reference run failed: {ref['log'][-3000:]}"], {})
    for name in open(modules).read().split():  # what a rank imports lazily: import it once, here
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - optional submodules needing what this machine lacks
            pass
    expected = losses(reference)
    events = census(args.work, steps)
    plan = plan_kills(events, args.kills, args.seed)
    published_at = events[0].index(PUBLISHED)
    marker = os.path.join(args.work, "killed.json")
    attempts = []
    resume_expected = 0
    from pretrain.train.checkpoint_manager import CheckpointManager, is_complete

    for n, target in enumerate(plan + [None]):
        if os.path.exists(marker):
            os.remove(marker)
        hooks = {"record": None, "target": target, "marker": marker}
        started = time.monotonic()
        out = fork_launch(killed, f"a{n:03d}", hooks, args.timeout)
        att = {"n": n, "target": target, "resume_expected": resume_expected,
               "seconds": round(time.monotonic() - started, 2)}
        log = out["log"]
        said = f"resumed from step {resume_expected} " in log
        if resume_expected and not said:
            failures.append(f"launch {n}: expected 'resumed from step {resume_expected}'; log tail: {log[-1500:]}")
        if not resume_expected and "resumed from step" in log:
            failures.append(f"launch {n}: resumed although no checkpoint was published")
        got = losses(killed)
        wrong = {s: (v, expected.get(s)) for s, v in got.items() if v != expected.get(s)}
        if wrong:
            failures.append(f"launch {n}: losses differ from the uninterrupted run: {dict(list(wrong.items())[:3])}")
        if target is None:
            if out["codes"] != [0, 0]:
                failures.append(f"final launch failed: {log[-3000:]}")
            if sorted(got) != list(range(1, steps + 1)):
                failures.append(f"final metrics steps {sorted(got)[:5]}... != 1..{steps}")
            att["result"] = "finished"
            attempts.append(att)
            break
        if out["timeout"] or out["signals"] != [signal.SIGKILL] * WORLD or not os.path.exists(marker):
            failures.append(f"launch {n}: not killed at {target} (signals {out['signals']}, codes {out['codes']}); "
                            f"log tail: {log[-1500:]}")
            break
        with open(marker) as f:
            killed_at = json.load(f)
        # Its place in a steady-state save (the index itself may be shifted by a leftover's cleanup).
        published = killed_at["rank"] == 0 and events[0].index(killed_at["key"]) >= published_at
        resume_expected = killed_at["step"] if published else killed_at["step"] - 1
        manager = CheckpointManager(killed, keep=2, log=lambda _: None)
        on_disk = manager.latest_step() or 0
        if on_disk != resume_expected:
            failures.append(f"launch {n}: killed at {killed_at}: `latest` is {on_disk}, expected {resume_expected}")
        elif resume_expected and not is_complete(os.path.join(manager.root, f"step_{resume_expected:06d}"))[0]:
            failures.append(f"launch {n}: killed at {killed_at}: latest checkpoint is incomplete")
        att.update(killed_at=killed_at, published=published)
        attempts.append(att)
    hit = {(a["killed_at"]["rank"], a["killed_at"]["key"]) for a in attempts if "killed_at" in a}
    return _report(args, t0, failures, {"events": events, "attempts": attempts, "steps": steps,
                                        "reference_seconds": reference_seconds,
                                        "positions_hit": len(hit),
                                        "positions": sum(len(v) for v in events.values())})


def _report(args, t0: float, failures: list[str], extra: dict) -> int:
    report = {"layout": args.layout, "seed": args.seed, "kills": args.kills, "failures": failures,
              "seconds": round(time.monotonic() - t0, 1), **extra}
    with open(os.path.join(args.work, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: report[k] for k in ("layout", "kills", "seconds", "failures")}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    raise SystemExit(main())
