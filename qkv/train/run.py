"""``qkv train`` and ``qkv evaluate``: a config file in, a run directory out (or carried on,
if it exists); a run directory in, a task's metrics out.

A run directory is only ever written by the run it belongs to. An ``out_dir`` that holds
anything but a qkv run is refused, and so is a second process training the same run (a
lock held while it trains); nothing in it is deleted.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from ..device import resolve_device
from ..errors import ConfigError
from ..files import atomic_write_text
from ..io import latest_checkpoint, save_config
from . import distributed
from .config import RUN_CONFIG, RunConfig, incompatible, load_run_config, read_run
from .lock import LOCK, RunLock, busy, holder
from .trainer import Trainer


def _task_class(name: str):
    from ..tasks import task_class  # tasks build on the engine, not the other way round

    return task_class(name)


def check_run_dir(run_dir: Path, tree: dict, locked: bool = False) -> bool:
    """Whether ``run_dir`` holds this run already (to be continued). One another process
    is training is refused (unless ``locked``: this process holds the lock). A missing or empty
    folder starts a new run; a folder with files that are not a qkv run, or a qkv run
    with another config, is refused."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"out_dir {run_dir} is a file, not a folder; choose another out_dir")
    folder = next(p for p in run_dir.absolute().parents if p.exists())  # the nearest that exists
    if not folder.is_dir():
        raise ConfigError(f"out_dir {run_dir} is inside {folder}, which is a file, not a folder; "
                          "choose another out_dir")
    pid = None if locked else holder(run_dir)  # (once we hold the lock, we are its holder)
    if pid is not None:
        raise busy(run_dir, pid)
    if not run_dir.exists() or not any(p.name != LOCK for p in run_dir.iterdir()):
        return False
    if not (run_dir / RUN_CONFIG).is_file():
        raise ConfigError(f"out_dir {run_dir} is not empty and is not a qkv run (no {RUN_CONFIG}); qkv does "
                          "not write into it. Choose another out_dir (--set out_dir=runs/NEW_NAME)")
    diffs = incompatible(read_run(run_dir).to_tree(), tree)  # keys added since it was written: defaults
    if diffs:
        state = (f"resume {run_dir}" if latest_checkpoint(run_dir) is not None
                 else f"reuse {run_dir} (it has no checkpoint yet)")
        raise ConfigError(f"cannot {state}: the config differs from the run's in settings it must "
                          f"keep ({'; '.join(diffs)}). Restore them, or start a new run with "
                          "--set out_dir=runs/NEW_NAME")
    return True


def build_task(task_cls, run: RunConfig, run_dir: Path, world):
    """The task, built by rank 0 first (it may train a tokenizer and cache encodings),
    which also writes run.json, config.json and the tokenizer."""
    task = None
    for first in (True, False):
        if world.is_main == first:
            torch.manual_seed(run.seed)
            task = task_cls.for_training(run, run_dir)
        if world.is_main and first:
            atomic_write_text(run_dir / RUN_CONFIG, json.dumps(run.to_tree(), indent=2) + "\n")
            save_config(task.model, run_dir)
            if task.tokenizer is not None:  # image tasks keep their preprocessing in config.json
                task.tokenizer.save(run_dir)
            n_params = sum(p.numel() for p in task.model.parameters())
            procs = f" on {world.world_size} processes" if world.enabled else ""
            print(f"{run.task}: {type(task.model).__name__} with {n_params / 1e6:.2f}M parameters"
                  f"{procs} -> {run_dir}")
        distributed.barrier()
    return task


def _remove_empty(run_dir: Path, top: Path) -> None:
    """Remove a run directory this run created, if it holds nothing but the lock file, and
    the folders above it up to ``top`` that creating it made, while they are empty."""
    if run_dir.is_dir() and all(p.name == LOCK for p in run_dir.iterdir()):
        (run_dir / LOCK).unlink(missing_ok=True)
        run_dir.rmdir()
        for folder in run_dir.parents:
            if folder == top.parent or any(folder.iterdir()):
                break
            folder.rmdir()


def train(config_path: str | Path, overrides: list[str] = (), *, resume: bool = False,
          progress: bool = True) -> Path:
    run = load_run_config(config_path, overrides)
    task_cls = _task_class(run.task)
    run = task_cls.resolve(run)
    run_dir, tree = Path(run.out_dir), run.to_tree()
    device = resolve_device(run.train.device, "train.device")
    if resume and latest_checkpoint(run_dir) is None:
        raise ConfigError(f"--resume: {run_dir} has no checkpoint to resume from")
    new = not run_dir.exists()
    top = next((p for p in reversed((run_dir, *run_dir.parents)) if not p.exists()), run_dir)  # mkdir -p's first
    world, _ = distributed.setup(device)
    try:
        if world.is_main:
            check_run_dir(run_dir, tree)
        with RunLock(run_dir) if world.is_main else contextlib.nullcontext():
            if world.is_main:
                check_run_dir(run_dir, tree, locked=True)  # again, now that no other process can change it
            try:
                task = build_task(task_cls, run, run_dir, world)
            except BaseException:
                if new and world.is_main:  # nothing of this run was written: leave no trace
                    _remove_empty(run_dir, top)
                raise
            trainer = Trainer(task.model, run.train, run_dir, batches=task.batches, loss=task.loss,
                              evaluate=task.validate, tokens_per_sample=task.tokens_per_sample,
                              progress=progress)
            trainer.fit()
    finally:
        distributed.teardown()
    return run_dir


def evaluate_run(run_dir: str | Path, split: str = "test", out: str | Path | None = None,
                 **options) -> dict:
    """``qkv evaluate``: score a run's latest checkpoint on one split of its data.

    Each task answers with its own metrics (and may write files, e.g. hypotheses or a
    figure, under ``out``, by default RUN_DIR/eval-SPLIT); ``options`` are the task's own
    (``Task.options``); one it does not declare is an error.
    """
    task_cls = _task_class(read_run(run_dir).task)
    known = {o.name for o in task_cls.options}
    unknown = sorted(set(options) - known)
    if unknown:
        takes = ", ".join(o.flag for o in task_cls.options) or "no options"
        raise ConfigError(f"the {task_cls.name} task's evaluate does not take {', '.join(unknown)}; it takes {takes}")
    task = task_cls.from_run(run_dir)
    out = Path(out) if out else Path(run_dir) / f"eval-{split}"
    return task.evaluate(task.model, split, out, **options)
