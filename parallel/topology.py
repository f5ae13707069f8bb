"""Process topology and the few collectives the trainer needs, in one place.

Why one place: torchrun and SLURM spell rank/world/node differently; every other module asks
`detect()` and never reads those variables itself. The trainer talks to torch.distributed only
through the helpers here (`all_reduce_sum`, `reduce_sum`, `all_gather_object`, `barrier`,
`is_main`). Two rules make the CUDA path the same code as the CPU path:
- every tensor handed to a collective is first placed on the process group's device
  (`to_backend_device`: the current CUDA device for NCCL, the CPU for gloo), because a pure NCCL
  group rejects host tensors;
- once a process group exists the collectives run at every world size, 1 included, so a device
  mismatch fails on one GPU exactly as it would on 64. Only without any process group (plain
  unit tests) are they the identity.
Pipeline parallelism splits the world into `pipeline_stages` x `dp_size` (DeepSpeed's
PipeDataParallelTopology: rank = stage * dp_size + dp_rank); data is sharded by dp rank.
"""
from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.distributed as dist

from .device import rank_device_index

BACKENDS = ("nccl", "gloo")


@dataclass(frozen=True)
class Topology:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    device: torch.device
    backend: str
    pipeline_stages: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_size(self) -> int:
        """Data-parallel replicas: the ranks that read different data."""
        return self.world_size // self.pipeline_stages

    @property
    def dp_rank(self) -> int:
        return self.rank % self.dp_size

    @property
    def pp_rank(self) -> int:
        """Pipeline stage of this rank (0 = embeddings, the stage that counts the data)."""
        return self.rank // self.dp_size


def _int(env: Mapping[str, str], *names: str, default: Optional[int] = None) -> Optional[int]:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"environment variable {name}={value!r} is not an integer") from None
    return default


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM nodelist: 'gpu[012-015,020],cpu1' -> 'gpu012' (no scontrol needed)."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if m is None:
        raise ValueError(f"cannot parse SLURM nodelist {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    return prefix if not ranges else prefix + ranges.split(",")[0].split("-")[0]


def slurm_master_port(job_id) -> int:
    """The rendezvous port of a SLURM job: every node derives the same one from the job id, and
    jobs sharing a node rarely collide (15000-29999: below Linux's ephemeral port range)."""
    return 15000 + int(job_id) % 15000


def _accelerator():
    # Imported lazily: importing deepspeed.accelerator picks the accelerator (DS_ACCELERATOR).
    from deepspeed.accelerator import get_accelerator

    return get_accelerator()


def default_backend() -> str:
    """nccl when CUDA is usable, else gloo (DeepSpeed's CPU accelerator would otherwise say 'ccl')."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def detect(env: Optional[Mapping[str, str]] = None, backend: Optional[str] = None,
           pipeline_stages: int = 1) -> Topology:
    """Read torchrun's or SLURM's variables (torchrun wins when both are set).

    backend: `parallel.backend` (None = nccl where CUDA works, else gloo). pipeline_stages must
    divide the world size. Also sets MASTER_ADDR / MASTER_PORT defaults under SLURM so
    `init_distributed` can rendezvous. `env` is injectable for tests; only the real os.environ
    is modified.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"parallel.backend={backend!r}: expected one of {', '.join(BACKENDS)} (or null)")
    real = env is None
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun / deepspeed launcher
        rank = _int(env, "RANK")
        world = _int(env, "WORLD_SIZE")
        local_rank = _int(env, "LOCAL_RANK", default=0)
        local_world = _int(env, "LOCAL_WORLD_SIZE", default=world)
        node_rank = _int(env, "GROUP_RANK", "NODE_RANK", default=rank // max(1, local_world))
        num_nodes = max(1, world // max(1, local_world))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank = _int(env, "SLURM_PROCID")
        world = _int(env, "SLURM_NTASKS")
        local_rank = _int(env, "SLURM_LOCALID", default=0)
        num_nodes = _int(env, "SLURM_NNODES", "SLURM_JOB_NUM_NODES", default=1)
        local_world = _int(env, "SLURM_NTASKS_PER_NODE", default=max(1, world // max(1, num_nodes)))
        node_rank = _int(env, "SLURM_NODEID", default=rank // max(1, local_world))
        if real:
            os.environ.setdefault("RANK", str(rank))
            os.environ.setdefault("WORLD_SIZE", str(world))
            os.environ.setdefault("LOCAL_RANK", str(local_rank))
            os.environ.setdefault("LOCAL_WORLD_SIZE", str(local_world))
            nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
            if "MASTER_ADDR" not in os.environ and nodelist:
                os.environ["MASTER_ADDR"] = first_slurm_host(nodelist)
            if env.get("SLURM_JOB_ID"):
                os.environ.setdefault("MASTER_PORT", str(slurm_master_port(env["SLURM_JOB_ID"])))
    else:  # plain `python script.py`
        rank, world, local_rank, local_world, node_rank, num_nodes = 0, 1, 0, 1, 0, 1
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    acc = _accelerator()
    if acc.device_name() == "cpu":
        device = torch.device("cpu")
    else:
        device = torch.device(acc.device_name(rank_device_index(local_rank, acc.device_count())))
    if pipeline_stages < 1 or world % pipeline_stages:
        raise ValueError(f"parallel.pipeline_stages={pipeline_stages} does not divide the world size {world} "
                         f"(nodes x processes per node)")
    return Topology(rank, local_rank, world, local_world, node_rank, num_nodes, device,
                    backend or default_backend(), pipeline_stages)


def init_distributed(topo: Topology, timeout: float = 1800.0) -> None:
    """Initialise torch.distributed through DeepSpeed (idempotent; works without a launcher)."""
    import deepspeed

    if dist.is_available() and dist.is_initialized():
        return
    if topo.world_size == 1 and "MASTER_ADDR" not in os.environ:
        # Single process without a launcher: DeepSpeed would try MPI discovery otherwise.
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if topo.device.type != "cpu":
        _accelerator().set_device(topo.device.index)
    deepspeed.init_distributed(dist_backend=topo.backend, auto_mpi_discovery=False,
                               timeout=datetime.timedelta(seconds=timeout),
                               rank=topo.rank, world_size=topo.world_size)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def backend_device() -> torch.device:
    """Where tensors for the default process group must live: NCCL -> this rank's CUDA device."""
    if _initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def to_backend_device(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` on the collective's device (the same tensor when it already is there)."""
    return tensor.to(backend_device(), non_blocking=False)


def is_main() -> bool:
    return not _initialized() or dist.get_rank() == 0


def barrier() -> None:
    if _initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Sum over ranks, in place, and return the tensor; a host tensor under NCCL goes to the
    device and back. Identity only when no process group exists."""
    if not _initialized():
        return tensor
    placed = to_backend_device(tensor)
    dist.all_reduce(placed, op=dist.ReduceOp.SUM, group=group)
    if placed is not tensor:
        tensor.copy_(placed)
    return tensor


def all_reduce_max(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Max over ranks, in place (same placement rules as all_reduce_sum)."""
    if not _initialized():
        return tensor
    placed = to_backend_device(tensor)
    dist.all_reduce(placed, op=dist.ReduceOp.MAX, group=group)
    if placed is not tensor:
        tensor.copy_(placed)
    return tensor


def reduce_sum(values: Sequence[float], group=None) -> list[float]:
    """Host numbers summed over ranks (float64, one collective), back as host numbers."""
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    return all_reduce_sum(tensor, group=group).tolist()


def all_gather_object(obj: Any) -> list:
    """Every rank's `obj`, ordered by rank (picklable objects)."""
    if not _initialized():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
