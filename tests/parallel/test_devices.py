"""One device per rank: the selection rule shared with DeepSpeed, and preflight's refusal of more
ranks per node than GPUs."""
import pytest
from omegaconf import OmegaConf

from launch.preflight import check_ranks_per_node
from parallel.device import rank_device_index
from pretrain.train.config import ConfigError


def test_local_rank_k_uses_device_k_and_never_shares():
    assert [rank_device_index(k, 4) for k in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="local rank 4 has no device of its own: 4 visible") as e:
        rank_device_index(4, 4)
    assert "\n" not in str(e.value) and "cluster.nproc" in str(e.value)


def cluster(**kw):
    return OmegaConf.create({"cluster": {"kind": "local", "nproc": 1, "gpus_per_node": 0, **kw}})


def test_preflight_refuses_more_local_ranks_than_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ConfigError, match=r"'cluster.nproc' = 4 exceeds the 2 GPUs visible on this machine "
                                          r"\(CUDA_VISIBLE_DEVICES=0,1\)") as e:
        check_ranks_per_node(cluster(nproc=4), visible_gpus=2)
    assert "\n" not in str(e.value)
    check_ranks_per_node(cluster(nproc=2), visible_gpus=2)
    check_ranks_per_node(cluster(nproc=8), visible_gpus=0)   # CPU ranks: any number


def test_preflight_refuses_more_slurm_ranks_than_gpus_per_node():
    with pytest.raises(ConfigError, match=r"'cluster.nproc' = 8 exceeds the 4 cluster.gpus_per_node"):
        check_ranks_per_node(cluster(kind="slurm", nproc=8, gpus_per_node=4))
    check_ranks_per_node(cluster(kind="slurm", nproc=4, gpus_per_node=4))
    check_ranks_per_node(cluster(kind="slurm", nproc=16, gpus_per_node=0))
