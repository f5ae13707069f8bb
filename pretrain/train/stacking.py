"""Progressive stacking (Gong et al. 2019, "StackingBERT"): the encoder grows during training.

`trainer.stacking.layers: [3, 6, 12]` and `trainer.stacking.steps: [1000, 3000]` train the first
3 layer applications until step 1000, then 6, then 12 (the model's `num_layers`, built in full
from the start so parameters, checkpoints and ZeRO partitions keep one shape). Growing from n to
m layers copies layer i to layer n + i for i < m - n: the weights, the fp32 master copy and the
optimizer state (Adam moments and step count), so a new layer continues exactly as its source
would, identically under ZeRO 0-2 and fp32/bf16/fp16 (Engine.copy_parameters). The depth a step runs at is a pure function of the step,
so a resume on either side of a growth step is exact: the grown weights are in the checkpoint,
the depth is recomputed. FLOPs/MFU count the active layers; the export has the depth reached.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class StackingPlan:
    layers: tuple[int, ...]   # depth of each stage
    steps: tuple[int, ...]    # the step (completed steps) at which stage k+1 starts

    @classmethod
    def from_config(cls, stacking) -> Optional["StackingPlan"]:
        layers = tuple(int(x) for x in (stacking.layers or ()))
        return cls(layers, tuple(int(x) for x in (stacking.steps or ()))) if layers else None

    def depth_at(self, step: int) -> int:
        """Layers the step after `step` completed steps runs."""
        k = sum(1 for s in self.steps if step >= s)
        return self.layers[k]

    def growth_at(self, step: int) -> Optional[tuple[int, int]]:
        """(old, new) depth when the step after `step` completed steps is the first of a stage."""
        if step in self.steps:
            k = self.steps.index(step)
            return self.layers[k], self.layers[k + 1]
        return None


def check_stacking(stacking, num_layers: int, arch: str, zero_stage: int, pipeline_stages: int) -> None:
    """One-line ValueErrors naming the key for a plan that cannot run."""
    layers, steps = list(stacking.layers or ()), list(stacking.steps or ())
    if not layers and not steps:
        return
    key = "trainer.stacking"
    if len(steps) != len(layers) - 1:
        raise ValueError(f"{key}.steps={steps}: needs one growth step per stage after the first "
                         f"({len(layers) - 1} for {key}.layers={layers})")
    if any(b <= a for a, b in zip(layers, layers[1:])) or layers[0] < 1:
        raise ValueError(f"{key}.layers={layers}: must be increasing depths >= 1")
    if any(b > 2 * a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"{key}.layers={layers}: a stage can at most double the depth (layer i is copied to i + n)")
    if layers[-1] != num_layers:
        raise ValueError(f"{key}.layers={layers}: must end at model.num_layers={num_layers}")
    if any(s < 1 for s in steps) or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"{key}.steps={steps}: must be increasing steps >= 1")
    if arch == "albert":
        raise ValueError(f"{key}: ALBERT shares its layers; stacking needs distinct layers (bert, modernbert)")
    if zero_stage == 3:
        raise ValueError(f"{key}: not with parallel.zero_stage=3 (the copy needs whole parameters on every rank); "
                         "use ZeRO 0-2")
    if pipeline_stages > 1:
        raise ValueError(f"{key}: not with parallel.pipeline_stages > 1 (the stages hold fixed layers)")


def growth_pairs(model, old: int, new: int) -> list[tuple[str, str]]:
    """(destination, source) parameter names: layer old + i <- layer i, for i < new - old.
    Parameters only the destination has (ModernBERT's layer 0 has no attention norm) keep
    their initial values."""
    params = dict(model.named_parameters())
    pairs = []
    for i in range(new - old):
        src, dst = f"encoder.layers.{i}.", f"encoder.layers.{old + i}."
        for name in params:
            if name.startswith(dst) and (src + name[len(dst):]) in params:
                pairs.append((name, src + name[len(dst):]))
    return pairs


class Stacking:
    """The loop's handle: sets the depth after a (re)start and grows the engine's model on time."""

    def __init__(self, plan: StackingPlan, engine, log):
        self.plan, self.engine, self.log = plan, engine, log

    def start(self, step: int) -> None:
        self.engine.module.active_layers = self.plan.depth_at(step)

    def before_step(self, step: int) -> None:
        grow = self.plan.growth_at(step)
        if grow is None:
            return
        old, new = grow
        self.engine.copy_parameters(growth_pairs(self.engine.module, old, new))
        self.engine.module.active_layers = new
        self.log(f"stacking: {old} -> {new} layers at step {step} (layer i copied to {old} + i with its optimizer state)")

    def after_rewind(self, to_step: int, step: int) -> None:
        """A checkpoint of step `to_step` was reloaded while the run is at `step` (steps never go
        back): the growths in between are applied again to the reloaded weights."""
        self.start(to_step)
        for g in self.plan.steps:
            if to_step < g <= step:
                self.before_step(g)

    def depth(self) -> int:
        return self.engine.module.active_layers
