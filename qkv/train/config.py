"""A training run's configuration: one TOML file (see configs/), overridable with --set.

Top level: ``task``, ``out_dir``, ``seed``; sections ``[data]`` and ``[model]`` belong to
the task (it checks them), ``[train]`` to the Trainer (``TrainConfig`` below).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, from_dict

SCHEDULES = ("cosine", "constant", "inverse_sqrt")
STRATEGIES = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    max_steps: int = 1000            # optimizer steps
    batch_size: int = 32             # samples per micro-batch
    grad_accum: int = 1              # micro-batches per optimizer step
    lr: float = 1e-3                 # peak learning rate
    min_lr: float = 1e-4             # floor of the cosine schedule
    schedule: str = "cosine"         # cosine | constant | inverse_sqrt, each after linear warmup
    warmup_steps: int = 100
    weight_decay: float = 0.1        # on matrices and embeddings; never on biases or norms
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0           # max global gradient norm; 0 = off
    log_interval: int = 10           # steps between metrics records
    eval_interval: int = 250         # steps between validation passes (and at the end)
    eval_batches: int = 20           # validation batches per pass
    ckpt_interval: int = 250         # steps between checkpoints (and at the end)
    keep_checkpoints: int = 2        # newest checkpoints kept on disk
    compile: bool = False            # torch.compile the model
    strategy: str = "ddp"            # with several processes: ddp (replicas) | fsdp (FSDP2 shards)
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    precision: str = "auto"          # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "grad_accum", "log_interval", "eval_interval",
                     "eval_batches", "ckpt_interval", "keep_checkpoints"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"train.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"train.precision must be auto, fp32 or bf16, got {self.precision!r}")


@dataclass
class RunConfig:
    task: str = "lm"
    out_dir: str = "runs/default"
    seed: int = 1337
    data: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_tree(cls, tree: dict[str, Any]) -> "RunConfig":
        tree = dict(tree)
        for section in ("data", "model", "train"):
            if not isinstance(tree.get(section, {}), dict):
                raise ConfigError(f"[{section}] must be a table of key = value pairs")
        tree["train"] = from_dict(TrainConfig, tree.get("train", {}), where="train")
        return from_dict(cls, tree)

    def to_tree(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# What a resumed run may not change: it would no longer be the same run.
FROZEN = ("task", "seed", "data", "model", "train.batch_size", "train.grad_accum")


def incompatible(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Differences between two config trees in the keys a resumed run must keep."""
    def get(tree, dotted):
        for part in dotted.split("."):
            tree = tree.get(part, {}) if isinstance(tree, dict) else None
        return tree

    diffs = []
    for key in FROZEN:
        a, b = get(saved, key), get(new, key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{k}: {a.get(k)!r} -> {b.get(k)!r}"
                      for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return diffs
