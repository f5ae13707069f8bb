"""The test cluster's own guard rails: a machine without SLURM where nothing can be installed skips
the SLURM tests with a reason that says how to enable them; taken ports fail clearly."""
from __future__ import annotations

import socket

import pytest

import cluster


def test_without_slurm_and_without_root_the_reason_says_how_to_enable(monkeypatch):
    monkeypatch.setattr(cluster.shutil, "which", lambda name: None)
    monkeypatch.setattr(cluster.os.path, "exists", lambda path: False)
    monkeypatch.setattr(cluster.os, "geteuid", lambda: 1000)
    reason = cluster.ensure_installed()
    assert reason.startswith("SLURM tests skipped: munged, slurmctld") and "apt-get install slurmctld slurmd" in reason
    assert "\n" not in reason


def test_taken_ports_move_to_the_next_block_or_fail_clearly(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        monkeypatch.setattr(cluster, "BASE_PORT", port)
        monkeypatch.setattr(cluster, "PORT_BLOCKS", 2)
        assert cluster.pick_ports()[0] == port + 10
        monkeypatch.setattr(cluster, "PORT_BLOCKS", 1)
        with pytest.raises(RuntimeError, match="PRETRAIN_TEST_SLURM_PORT"):
            cluster.pick_ports()
