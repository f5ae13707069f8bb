"""Process-tree helpers for bench/gpu_check.sh (psutil; the launcher starts torchrun in a new
session, so a process-group kill would miss the ranks: walk the parent links instead).

usage: python bench/proc_tree.py kill PID                       SIGKILL PID and all its descendants
       python bench/proc_tree.py kill-when-published PID LATEST STEP [TIMEOUT_S]
              wait until the checkpoint pointer LATEST names a step >= STEP, then kill PID's tree
"""
from __future__ import annotations

import os
import signal
import sys
import time

import psutil


def kill_tree(pid: int) -> int:
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return 0
    victims = root.children(recursive=True) + [root]
    for p in victims:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=60)
    return len(victims)


def published_step(latest: str) -> int:
    try:
        with open(latest) as f:
            return int(f.read().strip().rsplit("_", 1)[-1])
    except (OSError, ValueError):
        return -1


def main(argv: list[str]) -> int:
    if argv[:1] == ["kill"] and len(argv) == 2:
        print(f"killed {kill_tree(int(argv[1]))} processes")
        return 0
    if argv[:1] == ["kill-when-published"] and len(argv) in (4, 5):
        pid, latest, at = int(argv[1]), argv[2], int(argv[3])
        deadline = time.time() + (float(argv[4]) if len(argv) == 5 else 600)
        while published_step(latest) < at:
            alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            if not alive:
                print("the launcher ended before the checkpoint was published", file=sys.stderr)
                return 1
            if time.time() > deadline:
                print("no checkpoint was published in time", file=sys.stderr)
                return 1
            time.sleep(0.2)
        n = kill_tree(pid)
        print(f"kill -9 of {n} processes (launcher, torchrun, ranks, loader workers) after step "
              f"{published_step(latest)} was published ({os.path.dirname(os.path.dirname(latest))})")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
