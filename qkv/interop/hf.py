"""Reading and writing Hugging Face model directories (config.json + weights)."""
from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

from ..io import CheckpointError, atomic_write, atomic_write_text

SAFETENSORS, SHARD_INDEX, PICKLE = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"


def read_config(directory: Path) -> dict:
    file = directory / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{directory} has no config.json; is it a Hugging Face model directory?")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON ({e})") from e


def read_state_dict(directory: Path) -> dict[str, Tensor]:
    """Weights from model.safetensors (single or sharded), else pytorch_model.bin read with
    ``torch.load(weights_only=True)``: nothing is unpickled beyond tensors."""
    try:
        if (directory / SAFETENSORS).is_file():
            return safetensors.torch.load_file(str(directory / SAFETENSORS))
        if (directory / SHARD_INDEX).is_file():
            shards = sorted(set(json.loads((directory / SHARD_INDEX).read_text())["weight_map"].values()))
            return {k: v for s in shards for k, v in safetensors.torch.load_file(str(directory / s)).items()}
        if (directory / PICKLE).is_file():
            return torch.load(directory / PICKLE, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"the weights in {directory} are corrupt or unreadable "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from e
    raise CheckpointError(f"no weights in {directory}: expected {SAFETENSORS}, {SHARD_INDEX} or {PICKLE}")


def write(directory: Path, config: dict, state_dict: dict[str, Tensor]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_write(directory / SAFETENSORS,
                 lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write_text(directory / "config.json", json.dumps(config, indent=2) + "\n")
