"""Test-only fault injection for rank processes (never imported by product code).

Put this directory on PYTHONPATH and set PRETRAIN_TEST_FAULTS to a JSON object, e.g.
    {"rank": 1, "nan": [3], "grad_nan": [6], "scale": {"9": 30.0}}
On that rank, the n-th training loss this process computes (n = 1, 2, ...; one per micro-batch,
so the step number of a fresh run with grad_accum=1) is made NaN ("nan"), keeps its value but
gets a NaN gradient ("grad_nan"), or is multiplied ("scale": a loss spike with a matching
gradient). It wraps pretrain.objectives.base.Objective.__call__, what the engine calls for the
loss of every micro-batch (whatever the objective).
"""
import json
import os

_SPEC = os.environ.get("PRETRAIN_TEST_FAULTS")

if _SPEC and os.environ.get("RANK") is not None:
    spec = json.loads(_SPEC)
    if int(os.environ["RANK"]) == int(spec.get("rank", 0)):
        import torch

        from pretrain.objectives import base

        class _NanGrad(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.clone()

            @staticmethod
            def backward(ctx, grad):
                return grad * float("nan")

        real_call = base.Objective.__call__
        calls = {"n": 0}

        def faulty_call(self, *args, **kwargs):
            loss, stats = real_call(self, *args, **kwargs)
            if not torch.is_grad_enabled():  # evaluation
                return loss, stats
            calls["n"] += 1
            n = calls["n"]
            if n in spec.get("nan", []):
                loss = loss * float("nan")
            elif n in spec.get("grad_nan", []):
                loss = _NanGrad.apply(loss)
            elif str(n) in spec.get("scale", {}):
                loss = loss * float(spec["scale"][str(n)])
            return loss, stats

        base.Objective.__call__ = faulty_call
