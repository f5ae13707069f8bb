"""SIGTERM / SIGUSR1 -> checkpoint at the next step boundary, then exit (SLURM requeues)."""
from __future__ import annotations

import signal


class PreemptionFlag:
    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1)):
        self.received: int | None = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.received = signum

    @property
    def local(self) -> bool:
        return self.received is not None
