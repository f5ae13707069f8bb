"""Pretraining objectives, one module each, registered here (`OBJECTIVES`): the one list of the
names `objective.name` accepts (mlm, mlm_sop, mlm_nsp, electra, distill; auto picks the MLM one of the
model's sentence head). An objective defined elsewhere is named by its import path,
`objective.name=my_package.my_module:MyObjective` (a subclass of `Objective`): nothing in the
engines, loop, evaluation, tracker or status code knows any objective's names (base.py says what an
objective declares; docs/training.md "Objectives" has a worked example).
"""
from __future__ import annotations

import importlib

from .base import Metric, Objective
from .distill import Distill
from .electra import Electra
from .mlm import (STAT_KEYS, MaskedLM, MaskedLMWithNSP, MaskedLMWithSOP, masked_lm_loss, pretraining_loss,
                  sentence_targets)

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (MaskedLM, MaskedLMWithSOP, MaskedLMWithNSP,
                                                                     Electra, Distill)}
# objective.name=auto: masked-LM plus the sentence task of the model's head.
AUTO = {"none": "mlm", "sop": "mlm_sop", "nsp": "mlm_nsp"}
NAMES = ("auto", *OBJECTIVES)

__all__ = ["AUTO", "Metric", "NAMES", "OBJECTIVES", "Objective", "STAT_KEYS", "build_objective", "masked_lm_loss",
           "objective_class", "pretraining_loss", "resolve_name", "sentence_targets"]


def resolve_name(name: str, sentence_task: str) -> str:
    """`auto` -> the registered name for this sentence task; other names as given."""
    if name == "auto":
        if sentence_task not in AUTO:
            raise ValueError(f"objective.sentence_task={sentence_task!r}: expected one of {tuple(AUTO)}")
        return AUTO[sentence_task]
    return name


def objective_class(name: str) -> type[Objective]:
    """A registered objective, or one named by its import path (module:Class); one-line errors."""
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    if ":" not in name:
        raise ValueError(f"objective.name={name!r}: expected one of {NAMES} or an import path module:Class")
    module, _, attr = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"objective.name={name!r}: cannot import it ({type(e).__name__}: {e})") from None
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise ValueError(f"objective.name={name!r} is not a subclass of pretrain.objectives.Objective")
    return cls


def build_objective(cfg, model_cfg, name: str | None = None) -> Objective:
    """The objective of this config (cfg: the `objective` group; name overrides cfg.name), checked
    against the model and against the config's own sentence task."""
    name = resolve_name(name or getattr(cfg, "name", "auto"), cfg.sentence_task)
    objective = objective_class(name)(cfg, model_cfg)
    if objective.data_task != cfg.sentence_task:
        raise ValueError(f"objective.sentence_task={cfg.sentence_task!r} contradicts objective.name={name} "
                         f"(which trains on {objective.data_task!r}); leave objective.sentence_task as the preset sets it")
    objective.check()
    return objective
