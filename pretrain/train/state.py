"""TrainState: the trainer's own part of a checkpoint (the engine saves model and optimizer)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class TrainState:
    step: int = 0
    consumed_samples: int = 0
    consumed_tokens: int = 0
    data_cursor: dict = field(default_factory=dict)
    tracker: dict = field(default_factory=dict)
    config_hash: str = ""
    seed: int = 0
    world_size: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    def restore(self, saved: dict) -> None:
        """Take what a checkpoint saved, except what describes the *current* launch."""
        for f in fields(self):
            if f.name in saved and f.name not in ("config_hash", "world_size"):
                setattr(self, f.name, saved[f.name])
