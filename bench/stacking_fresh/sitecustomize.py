"""Bench-only (bench/stacking.py): with STACKING_FRESH=1 on PYTHONPATH, progressive stacking copies
the weights but starts the new layers' optimizer state fresh, with their own step count (ZeRO-0
fp32 only: the optimizer state is keyed by the module's parameters there). Never imported by
product code; it measures the alternative the trainer does not use."""
import os

if os.environ.get("STACKING_FRESH") == "1":
    import parallel.engine_base as base

    _copy = base.Engine.copy_parameters

    def copy_then_forget(self, pairs):
        _copy(self, pairs)
        params = dict(self.module.named_parameters())
        for dst, _ in pairs:
            self.guard.inner.state.pop(params[dst], None)

    base.Engine.copy_parameters = copy_then_forget
