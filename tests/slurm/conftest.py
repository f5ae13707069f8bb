"""Fixtures for tests against a real SLURM cluster on this machine (tests/slurm/cluster.py).

`slurm`: one cluster per test session (munge + slurmctld + two slurmd as nodes n1, n2), started on
first use and stopped by pid at the end. Where SLURM is missing and cannot be installed (not
root, no apt-get) the tests that use it are skipped with a one-line reason saying how to enable
them; pytest's -ra summary lists it.
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "launch"))  # launch_helpers (COMMON, local runs)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    from cluster import SlurmCluster, ensure_installed

    reason = ensure_installed()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster.start(str(tmp_path_factory.mktemp("slurm")))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def tiny_data(prepared_demo) -> str:
    return prepared_demo
