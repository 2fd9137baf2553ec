"""A training run's configuration: one TOML file (see configs/), overridable with --set.

Top level: ``task``, ``out_dir``, ``seed``; sections ``[data]`` and ``[model]`` belong to
the task (it checks them), ``[train]`` to the Trainer (``TrainConfig`` below).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import apply_overrides, from_dict, load_toml
from ..errors import CheckpointError, ConfigError
from ..files import read_json

SCHEDULES = ("cosine", "constant", "inverse_sqrt")
OPTIMIZERS = ("adamw", "muon")
STRATEGIES = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    max_steps: int = 1000            # optimizer steps
    batch_size: int | None = None    # samples per micro-batch, all processes together; unset: 32,
                                     # or for a task that batches by tokens, one batch per process
    grad_accum: int = 1              # micro-batches per optimizer step
    optimizer: str = "adamw"         # adamw | muon (Muon on the attention and feed-forward
                                     # matrices, AdamW on the rest; single process or DDP)
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
    precision: str = "auto"          # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32
                                     # | bf16 (CUDA, or a CPU with AMX or AVX512-BF16)
    nonfinite: str = "stop"          # a NaN/inf loss or gradient: stop (keep the last checkpoint)
                                     # | skip (drop that step's update; see Trainer)

    def __post_init__(self):
        """Check each key's type and range, so that a bad value fails before anything is written."""
        def integer(v, least: int) -> bool:  # bool is an int in Python, but `true` is no step count
            return isinstance(v, int) and not isinstance(v, bool) and v >= least

        def number(v, high: float = float("inf")) -> bool:  # in [0, high): nan and inf fail
            return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < high

        def one_of(choices) -> str:
            return "one of " + ", ".join(choices)

        positive_int = "a positive integer"
        checks = [
            ("max_steps", integer(self.max_steps, 1), positive_int),
            ("batch_size", self.batch_size is None or integer(self.batch_size, 1), positive_int),
            ("grad_accum", integer(self.grad_accum, 1), positive_int),
            ("optimizer", self.optimizer in OPTIMIZERS, one_of(OPTIMIZERS)),
            ("lr", number(self.lr) and self.lr > 0, "a positive number"),
            ("min_lr", number(self.min_lr), "a number >= 0"),
            ("schedule", self.schedule in SCHEDULES, one_of(SCHEDULES)),
            ("warmup_steps", integer(self.warmup_steps, 0), "an integer >= 0"),
            ("weight_decay", number(self.weight_decay), "a number >= 0"),
            ("beta1", number(self.beta1, high=1), "a number in [0, 1)"),
            ("beta2", number(self.beta2, high=1), "a number in [0, 1)"),
            ("eps", number(self.eps) and self.eps > 0, "a positive number"),
            ("grad_clip", number(self.grad_clip), "a number >= 0 (0 = off)"),
            *((name, integer(getattr(self, name), 1), positive_int) for name in
              ("log_interval", "eval_interval", "eval_batches", "ckpt_interval", "keep_checkpoints")),
            ("compile", isinstance(self.compile, bool), "true or false"),
            ("strategy", self.strategy in STRATEGIES, one_of(STRATEGIES)),
            ("device", isinstance(self.device, str), "a device name (auto, cpu, cuda or cuda:N)"),
            ("precision", self.precision in ("auto", "fp32", "bf16"), one_of(("auto", "fp32", "bf16"))),
            ("nonfinite", self.nonfinite in ("stop", "skip"), one_of(("stop", "skip"))),
        ]
        for name, ok, what in checks:
            if not ok:
                raise ConfigError(f"train.{name} must be {what}, got {getattr(self, name)!r}")
        if self.min_lr > self.lr:
            raise ConfigError(f"train.min_lr ({self.min_lr}) must not exceed train.lr ({self.lr}): it is "
                              "the floor the learning rate decays to; lower train.min_lr too")


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


RUN_CONFIG = "run.json"  # a run directory's resolved config


def load_run_config(config_path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """A TOML config file with ``--set`` overrides applied."""
    return RunConfig.from_tree(apply_overrides(load_toml(config_path), list(overrides)))


def read_run(run_dir: str | Path) -> RunConfig:
    """The configuration a run directory was trained with (its run.json)."""
    file = Path(run_dir) / RUN_CONFIG
    if not file.is_file():
        raise CheckpointError(f"{run_dir} is not a qkv run directory (no {RUN_CONFIG}); "
                              "give the out_dir of a `qkv train` run")
    return RunConfig.from_tree(read_json(file))


# What a resumed run may not change: it would no longer be the same run.
FROZEN = ("task", "seed", "data", "model", "train.batch_size", "train.grad_accum", "train.optimizer")


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
