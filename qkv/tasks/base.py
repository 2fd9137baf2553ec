"""The Task contract: what every task (lm, mlm, translation, classification, ...) gives the
rest of qkv, so that ``qkv train``, ``qkv evaluate`` and the Trainer never ask which task
they hold.

A task is built two ways:

- ``Task.for_training(run, run_dir)``: from a run config. Builds the model (through the
  model registry, from ``[model]``) and the tokenizer (or reuses the one a run directory
  already holds), then reads its training and validation data;
- ``Task.from_run(run_dir)``: a trained run's task with its latest weights and tokenizer,
  to evaluate; no training data is read.

and then offers:

- ``batches(first, count)``: samples ``first .. first+count-1`` of the training stream, a
  pure function of the sample index (so a resumed run sees the same data);
- ``loss(model, batch)``: the scalar training loss; it calls ``model(...)``;
- ``validate(model)``: the few fixed validation batches the Trainer scores as it trains;
- ``evaluate(model, split, out, **options)``: the metrics of a whole split (``qkv
  evaluate``), writing any files (hypotheses, figures) under ``out``; ``options`` are the
  task's own, declared in ``options`` so that the command line offers exactly those;
- ``inputs(split, count)``: a fixed batch of model inputs from a split (``qkv analyze``).

``batching`` says what ``train.batch_size`` counts: ``"samples"`` (the default), or
``"tokens"`` for a task whose batches hold a token budget (``data.max_tokens``) of
sentences of similar length; such a task takes one of its batches per process and
micro-step and refuses ``train.batch_size``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..config import from_dict
from ..errors import ConfigError
from ..train.config import RunConfig, read_run

DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class Option:
    """One ``qkv evaluate`` option of a task: ``--name VALUE``."""
    name: str          # the keyword of ``evaluate`` (the flag is --name with - for _)
    type: type
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


class Task:
    name: ClassVar[str]                     # as written in a run config: task = "lm"
    data_config: ClassVar[type]             # the dataclass of [data]
    batching: ClassVar[str] = "samples"     # "samples" | "tokens" (see above)
    options: ClassVar[tuple[Option, ...]] = ()
    tokens_per_sample: float = 0            # for the Trainer's tokens/s; images count 1

    def __init__(self, run: RunConfig, model, tokenizer):
        self.run, self.model, self.tokenizer = run, model, tokenizer
        self.data = from_dict(self.data_config, run.data, where="data")

    # -- building -----------------------------------------------------------------------
    @classmethod
    def check(cls, run: RunConfig) -> None:
        """Validate what can be validated before anything is read or written: ``[data]``'s
        keys and types, and ``train.batch_size`` against the task's batching."""
        from_dict(cls.data_config, run.data, where="data")
        if cls.batching == "tokens" and run.train.batch_size is not None:
            raise ConfigError(f"the {cls.name} task batches by tokens (data.max_tokens per process and "
                              "micro-step): remove train.batch_size, and use train.grad_accum for larger steps")

    @classmethod
    def resolve(cls, run: RunConfig) -> RunConfig:
        """The run config with the task's defaults filled in (what run.json records)."""
        cls.check(run)
        if cls.batching == "samples" and run.train.batch_size is None:
            run.train.batch_size = DEFAULT_BATCH_SIZE
        return run

    @classmethod
    def build(cls, run: RunConfig, run_dir: Path) -> tuple[torch.nn.Module, Any]:
        """A fresh model and the tokenizer for a run (the run directory's own tokenizer when
        it has one, so a resumed run keeps its vocabulary)."""
        raise NotImplementedError

    def prepare_training(self) -> None:
        """Read the training stream and the validation batches."""
        raise NotImplementedError

    @classmethod
    def for_training(cls, run: RunConfig, run_dir: str | Path) -> "Task":
        model, tokenizer = cls.build(run, Path(run_dir))
        task = cls(run, model, tokenizer)
        task.prepare_training()
        return task

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "Task":
        from ..io import load

        run = read_run(run_dir)
        if run.task != cls.name:
            raise ConfigError(f"{run_dir} is a {run.task!r} run, not {cls.name!r}")
        model, tokenizer = load(run_dir)
        return cls(run, model, tokenizer)

    # -- training -----------------------------------------------------------------------
    def batches(self, first: int, count: int):
        raise NotImplementedError

    def loss(self, model, batch) -> torch.Tensor:
        raise NotImplementedError

    def validate(self, model) -> dict[str, float]:
        return {}

    # -- evaluation and analysis ----------------------------------------------------------
    def evaluate(self, model, split: str, out: Path, **options) -> dict[str, Any]:
        raise ConfigError(f"the {self.name} task has no `qkv evaluate`")

    def inputs(self, split: str, count: int) -> torch.Tensor:
        """The model inputs of the first ``count`` examples of a split, always the same
        (what ``qkv analyze`` measures a model on)."""
        raise ConfigError(f"the {self.name} task gives no inputs to analyse")


class EpochShuffle:
    """The example index of each sample of a training stream over ``n`` examples: epoch after
    epoch, each a permutation fixed by (seed, epoch), so that sample ``i`` is a pure function
    of ``i`` (a resumed run sees the same data)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._epoch, self._order = n, seed, None, None

    def __call__(self, first: int, count: int) -> np.ndarray:
        index = np.empty(count, np.int64)
        for k, i in enumerate(range(first, first + count)):
            if i // self.n != self._epoch:  # one permutation held at a time
                self._epoch = i // self.n
                self._order = np.random.default_rng([self.seed, self._epoch]).permutation(self.n)
            index[k] = self._order[i % self.n]
        return index


def check_text_model(model, tokenizer, seq_len: int, context: str) -> None:
    """A text model's vocabulary covers the tokenizer's, and its context (config field
    ``context``) holds ``data.seq_len`` tokens."""
    c = model.config
    if c.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size={c.vocab_size} is smaller than the tokenizer's "
                          f"{tokenizer.vocab_size}; remove it to use the tokenizer's size")
    if seq_len > getattr(c, context):
        raise ConfigError(f"data.seq_len={seq_len} exceeds the model's context (model.{context}="
                          f"{getattr(c, context)}); lower data.seq_len or raise model.{context}")


def device_of(model) -> torch.device:
    return next(model.parameters()).device
