"""Run a real 1-process training run (train + eval + checkpoint) with our collectives routed
through a recording stand-in for an NCCL process group. Used by test_collectives_device.py.

usage: python _collectives_worker.py RUN_DIR OUT_JSON

The stand-in behaves as NCCL does where it matters: it rejects any tensor that is not on the
CUDA device. There is no GPU here, so "placed on the backend's device" is emulated: the one
placement function in parallel.topology (`to_backend_device`) is replaced by one that tags
tensors as CUDA-resident (a Tensor subclass whose `.device` says cuda:0). A host tensor that
bypasses the placement helper reaches the stand-in untagged and fails exactly as on NCCL.
DeepSpeed's own collectives use torch.distributed directly (real gloo, world size 1).
"""
from __future__ import annotations

import json
import sys

import torch


class OnCuda(torch.Tensor):
    """A CPU tensor that reports itself as CUDA-resident (what the stand-in checks)."""

    @property
    def device(self):  # noqa: D401 - mimics torch.Tensor.device
        return torch.device("cuda", 0)


class RecordingNccl:
    """torch.distributed as seen through an NCCL group; everything else delegates to the real module."""

    def __init__(self, real):
        self._real = real
        self.calls: list[dict] = []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def get_backend(self, group=None):
        return "nccl"

    def _check(self, op, tensor):
        device = tensor.device.type
        self.calls.append({"op": op, "device": device, "shape": list(tensor.shape)})
        if device != "cuda":
            raise RuntimeError(f"stand-in NCCL group: {op} got a tensor on {device}; "
                               "NCCL accepts CUDA tensors only (Tensors must be CUDA and dense)")

    def all_reduce(self, tensor, op=None, group=None, async_op=False):
        self._check("all_reduce", tensor)
        return self._real.all_reduce(tensor.as_subclass(torch.Tensor), op=op, group=group)

    def broadcast(self, tensor, src=0, group=None, async_op=False):
        self._check("broadcast", tensor)
        return self._real.broadcast(tensor.as_subclass(torch.Tensor), src=src, group=group)

    def all_gather_object(self, out, obj, group=None):
        self.calls.append({"op": "all_gather_object", "device": "object", "shape": []})
        return self._real.all_gather_object(out, obj, group=group)

    def barrier(self, group=None, **kwargs):
        self.calls.append({"op": "barrier", "device": "none", "shape": []})
        return self._real.barrier(group=group)


def main(run_dir: str, out_json: str) -> int:
    import parallel.topology as topology
    from launch.rundir import load_run_config
    from pretrain.train.loop import train

    recorder = RecordingNccl(topology.dist)
    topology.dist = recorder
    topology.to_backend_device = lambda t: t if isinstance(t, OnCuda) else t.detach().clone().as_subclass(OnCuda)
    error = None
    try:
        train(load_run_config(run_dir), run_dir)
    except RuntimeError as e:
        error = str(e).splitlines()[0]
    with open(out_json, "w") as f:
        json.dump({"calls": recorder.calls, "error": error}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
