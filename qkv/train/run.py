"""``qkv train``: a config file in, a run directory out (or carried on, if it exists)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ConfigError, apply_overrides, load_toml
from ..files import atomic_write_text, read_json
from ..errors import CheckpointError
from ..io import CONFIG, latest_checkpoint, save_config
from ..tokenizers import TOKENIZERS
from .config import RunConfig, incompatible
from . import distributed
from .image_classification import ImageClassificationTask
from .lm import LanguageModelTask
from .mlm import MaskedLanguageModelTask
from .text_classification import TextClassificationTask
from .trainer import Trainer, resolve_device
from .translation import TranslationTask

TASKS = {"lm": LanguageModelTask, "mlm": MaskedLanguageModelTask, "translation": TranslationTask,
         "text_classification": TextClassificationTask, "image_classification": ImageClassificationTask}
RUN_CONFIG = "run.json"


def _fresh_run_dir(run_dir: Path) -> None:
    """Remove what an earlier run that never reached a checkpoint left behind."""
    for name in ("metrics.jsonl", RUN_CONFIG, CONFIG, *(cls.filename for cls in TOKENIZERS.values())):
        (run_dir / name).unlink(missing_ok=True)


def load_run_config(config_path: str | Path, overrides: list[str] = ()) -> RunConfig:
    return RunConfig.from_tree(apply_overrides(load_toml(config_path), list(overrides)))


def read_run(run_dir: str | Path) -> RunConfig:
    """The configuration a run directory was trained with (its run.json)."""
    file = Path(run_dir) / RUN_CONFIG
    if not file.is_file():
        raise CheckpointError(f"{run_dir} is not a qkv run directory (no {RUN_CONFIG}); "
                              "give the out_dir of a `qkv train` run")
    return RunConfig.from_tree(read_json(file))


def evaluate_run(run_dir: str | Path, split: str = "test", out: str | Path | None = None,
                 **options) -> dict[str, float]:
    """``qkv evaluate``: score a run's latest checkpoint on one split of its data.

    Each task answers with its own metrics (and may write files, e.g. hypotheses or a
    figure, under ``out``, by default RUN_DIR/eval-SPLIT); ``options`` are task-specific.
    """
    run = read_run(run_dir)
    task = TASKS.get(run.task)
    if task is None or not hasattr(task, "evaluate_run"):
        raise ConfigError(f"task {run.task!r} of {run_dir} has no `qkv evaluate`")
    out = Path(out) if out else Path(run_dir) / f"eval-{split}"
    return task.evaluate_run(Path(run_dir), run, split, out, **options)


def train(config_path: str | Path, overrides: list[str] = (), *, resume: bool = False,
          progress: bool = True) -> Path:
    run = load_run_config(config_path, overrides)
    if run.task not in TASKS:
        raise ConfigError(f"unknown task {run.task!r}; qkv knows: {', '.join(sorted(TASKS))}")
    run_dir = Path(run.out_dir)
    tree = run.to_tree()
    if latest_checkpoint(run_dir) is not None:
        if not (run_dir / RUN_CONFIG).is_file():
            raise CheckpointError(f"{run_dir} has checkpoints but no {RUN_CONFIG}; it was not "
                                  "written by `qkv train`. Use a new out_dir.")
        saved = read_json(run_dir / RUN_CONFIG)
        diffs = incompatible(saved, tree)
        if diffs:
            raise ConfigError(
                f"cannot resume {run_dir}: the config differs from the run's in settings it must "
                f"keep ({'; '.join(diffs)}). Restore them, or start a new run with "
                "--set out_dir=runs/NEW_NAME"
            )
    elif resume:
        raise ConfigError(f"--resume: {run_dir} has no checkpoint to resume from")
    world, _ = distributed.setup(resolve_device(run.train.device))
    try:
        if world.is_main and latest_checkpoint(run_dir) is None:
            _fresh_run_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        for first in (True, False):  # rank 0 first: it may train a tokenizer and cache encodings
            if world.is_main == first:
                torch.manual_seed(run.seed)
                task = TASKS[run.task](run, run_dir)
            if world.is_main and first:
                atomic_write_text(run_dir / RUN_CONFIG, json.dumps(tree, indent=2) + "\n")
                save_config(task.model, run_dir)
                if task.tokenizer is not None:  # image tasks keep their preprocessing in config.json
                    task.tokenizer.save(run_dir)
                n_params = sum(p.numel() for p in task.model.parameters())
                procs = f" on {world.world_size} processes" if world.enabled else ""
                print(f"{run.task}: {type(task.model).__name__} with {n_params / 1e6:.2f}M parameters"
                      f"{procs} -> {run_dir}")
            distributed.barrier()
        trainer = Trainer(task.model, run.train, run_dir, batches=task.batches, loss=task.loss,
                          evaluate=task.evaluate, tokens_per_sample=task.tokens_per_sample,
                          progress=progress)
        trainer.fit()
    finally:
        distributed.teardown()
    return run_dir
