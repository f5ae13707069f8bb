"""Topology from torchrun / SLURM / nothing, and the single-process collectives."""
import os

import pytest
import torch

from parallel import topology
from parallel.topology import detect, first_slurm_host


def test_torchrun_env():
    t = detect({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                "GROUP_RANK": "1"}, backend="gloo")
    assert (t.rank, t.local_rank, t.world_size, t.local_world_size, t.node_rank, t.num_nodes) == (5, 1, 8, 4, 1, 2)
    assert t.backend == "gloo" and not t.is_main


def test_slurm_env_sets_nothing_when_injected():
    env = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4", "SLURM_NODEID": "1",
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[007-008]"}
    t = detect(env)
    assert (t.rank, t.local_rank, t.world_size, t.local_world_size, t.node_rank, t.num_nodes) == (3, 1, 4, 2, 1, 2)


def test_slurm_sets_master_addr(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "x")  # recorded, so teardown removes what detect() sets
        monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[12,15]")
    t = detect()
    assert t.world_size == 2 and os.environ["MASTER_ADDR"] == "node12" and os.environ["WORLD_SIZE"] == "2"


def test_plain_process_and_default_backend():
    t = detect({})
    assert (t.rank, t.world_size, t.num_nodes) == (0, 1, 1) and t.is_main
    assert t.backend == ("nccl" if torch.cuda.is_available() else "gloo")
    assert t.device.type == ("cpu" if not torch.cuda.is_available() else t.device.type)


@pytest.mark.parametrize("nodelist,host", [("a1", "a1"), ("gpu[012-015,020],cpu1", "gpu012"),
                                           ("n[3,5]", "n3"), ("x1,x2", "x1")])
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_bad_values_are_one_line_errors():
    with pytest.raises(ValueError, match="RANK='x'"):
        detect({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="outside world size"):
        detect({"RANK": "2", "WORLD_SIZE": "2"})


def test_collectives_without_process_group():
    t = torch.ones(2)
    assert topology.all_reduce_sum(t) is t and t.tolist() == [1.0, 1.0]
    assert topology.all_gather_object({"a": 1}) == [{"a": 1}]
    assert topology.is_main()
    topology.barrier()
