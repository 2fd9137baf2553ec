"""Saving and loading model directories, and ``qkv.load``.

A model directory holds ``config.json`` (``model_type`` plus the config's fields) and
``model.safetensors``. A run directory holds ``config.json``, the tokenizer and
``checkpoints/``; loading it takes the latest checkpoint's weights. Nothing is unpickled.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import NamedTuple

import safetensors.torch
from torch import nn

from .config import from_dict
from .errors import CheckpointError, ConfigError
from .files import atomic_write, atomic_write_text, read_json

WEIGHTS = "model.safetensors"
SHARDED = "sharded"  # an FSDP checkpoint: torch.distributed.checkpoint's files, one per rank
CONFIG = "config.json"
LATEST = "latest"


def save_config(model: nn.Module, directory: str | Path) -> None:
    config = {"model_type": model.model_type, **dataclasses.asdict(model.config)}
    atomic_write_text(Path(directory) / CONFIG, json.dumps(config, indent=2) + "\n")


def save_model(model: nn.Module, directory: str | Path) -> Path:
    """Write config.json and model.safetensors into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_config(model, directory)
    state_owner = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    atomic_write(directory / WEIGHTS, lambda tmp: safetensors.torch.save_model(state_owner, str(tmp)))
    return directory


def read_config(directory: Path) -> dict:
    """config.json of a model directory, or of the run a checkpoint directory belongs to."""
    for candidate in (directory, *directory.parents[:2]):
        if (candidate / CONFIG).is_file():
            config = read_json(candidate / CONFIG)
            if not isinstance(config, dict):
                raise CheckpointError(f"{candidate / CONFIG} must be a JSON object (model_type and the config's "
                                      f"fields), got a {type(config).__name__}; restore the config.json saved "
                                      "with the model")
            return config
    raise CheckpointError(f"no {CONFIG} in {directory}: is this a qkv run or model directory?")


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The directory named by ``run_dir/checkpoints/latest``, or None if there is none."""
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    ckpt = pointer.parent / pointer.read_text().strip()
    if not (ckpt / WEIGHTS).is_file() and not (ckpt / SHARDED / ".metadata").is_file():
        raise CheckpointError(
            f"{pointer} points at {ckpt}, which has no {WEIGHTS}; the checkpoint is missing. "
            f"Point {pointer} at an older checkpoints/step-* directory, or retrain."
        )
    return ckpt


def weights_path(path: Path) -> Path:
    """model.safetensors of a model directory or of a run's latest checkpoint (or, for a
    run trained with FSDP, the checkpoint's sharded/ folder)."""
    for candidate in (path / WEIGHTS, path / SHARDED):
        if candidate.exists():
            return candidate
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise CheckpointError(
            f"no weights in {path}: expected {WEIGHTS} or checkpoints/{LATEST} "
            "(a run directory has weights once training has written its first checkpoint)"
        )
    return weights_path(ckpt)


def load_sharded_weights(model: nn.Module, folder: Path) -> None:
    """Gather an FSDP checkpoint (torch.distributed.checkpoint, any number of shards) into
    an ordinary model, in this one process."""
    import torch.distributed.checkpoint as dcp

    state = {"model": model.state_dict()}
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, checkpoint_id=str(folder), no_dist=True)
    except Exception as e:
        raise CheckpointError(f"{folder} is not a complete sharded checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160]})") from e
    model.load_state_dict(state["model"])


def check_shapes(model: nn.Module, file: Path) -> None:
    """Every tensor the model needs, present in ``file`` with the shape its config gives."""
    with safetensors.safe_open(str(file), framework="pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    state = model.state_dict()
    wanted = {k: tuple(v.shape) for k, v in state.items()}
    shared: dict[int, list[str]] = {}  # tied weights are saved once, under one of their names
    for k, v in state.items():
        shared.setdefault(v.data_ptr(), []).append(k)
    present = {k for names in shared.values() if set(names) & set(saved) for k in names}
    missing, unexpected = sorted(set(wanted) - present), sorted(set(saved) - set(wanted))
    if missing or unexpected:
        raise CheckpointError(f"{file} does not match its config: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}; it was saved from another model")
    for name in wanted:
        if name in saved and saved[name] != wanted[name]:
            raise CheckpointError(f"{file} does not match its config: tensor {name} has shape {saved[name]} "
                                  f"in the file but {wanted[name]} in the model the config describes; "
                                  "restore the config.json that was saved with these weights")


def load_weights(model: nn.Module, file: Path) -> None:
    if file.is_dir():
        return load_sharded_weights(model, file)
    try:
        check_shapes(model, file)
        safetensors.torch.load_model(model, str(file), strict=False)
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises several types for truncated/garbled files
        raise CheckpointError(
            f"{file} is corrupt or incomplete ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "restore it or load an earlier checkpoint"
        ) from e


class Loaded(NamedTuple):
    model: nn.Module
    tokenizer: object | None


def load(path: str | Path, device: str = "cpu") -> Loaded:
    """Load a model (and its tokenizer, when the directory has one) from a qkv run
    directory, a checkpoint directory, a qkv model directory or a Hugging Face model
    directory (see ``qkv.interop``). The model is in eval mode."""
    from .interop import from_hf, is_hf_config
    from .tokenizers import find_tokenizer

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    config = read_config(path)
    if is_hf_config(config):  # a Hugging Face directory
        return Loaded(from_hf(path, device), find_tokenizer(path))
    from .models import from_config

    model = from_config(config)
    load_weights(model, weights_path(path))
    return Loaded(model.to(device).eval(), find_tokenizer(path))
