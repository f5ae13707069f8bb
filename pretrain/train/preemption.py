"""Checkpoint-and-exit requests: a signal, or the SLURM job running out of time.

SIGTERM (scancel, preemption, the end of a time limit) and the configured `cluster.signal`
(USR1 by default; USR2 where NCCL or the site uses USR1) mean: checkpoint at the next step
boundary, then exit 0 so the batch script can requeue. The ranks agree on it in the loop's
per-step all-reduce, so they all stop at the same step.

A rank process installs `install_early` first thing (launch/worker.py), before the seconds of
imports and engine setup: a signal in that window is kept, not lost, and never kills the rank.
"""
from __future__ import annotations

import signal
from typing import Optional, Protocol

_early: list[int] = []


def checkpoint_signals(name: str = "USR1") -> tuple[signal.Signals, ...]:
    """SIGTERM plus the configured checkpoint signal ('USR1' | 'USR2', config key cluster.signal)."""
    return (signal.SIGTERM, signal.Signals[f"SIG{name}"])


def _record_early(signum, _frame) -> None:
    _early.append(signum)


def install_early(signals) -> None:
    for sig in signals:
        signal.signal(sig, _record_early)


def ignore_late(name: str = "USR1") -> None:
    """Once the loop is over: ignore the checkpoint signal. A late one (a second preemption, the
    time-limit signal after the safety net already stopped the run) must not kill a rank on its
    way out: CPython resets Python handlers to the default action, terminate, while it shuts
    down, and the launcher would see a failed rank. An ignored signal stays ignored."""
    signal.signal(signal.Signals[f"SIG{name}"], signal.SIG_IGN)


class Deadline(Protocol):
    def near(self) -> bool: ...


class PreemptionFlag:
    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1), deadline: Optional[Deadline] = None):
        self.received: int | None = _early[-1] if _early else None  # taken over from install_early
        _early.clear()
        self.deadline = deadline
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.received = signum

    @property
    def local(self) -> bool:
        """This rank was asked to stop (signal) or its job is about to hit its time limit."""
        return self.received is not None or (self.deadline is not None and self.deadline.near())
