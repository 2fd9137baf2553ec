"""Training checkpoints, written so that a crash at any instant leaves a loadable one.

``run_dir/checkpoints/step-000250/`` holds config.json, model.safetensors, optimizer.pt and
trainer_state.json (step, samples seen, RNG states). It is written under a temporary name
and renamed into place when complete; only then does ``checkpoints/latest`` (replaced
atomically) point at it. A half-written checkpoint is never named by ``latest``.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from ..io import LATEST, CheckpointError, atomic_write, atomic_write_text, latest_checkpoint, load_weights, save_model

OPTIMIZER = "optimizer.pt"
STATE = "trainer_state.json"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return {k: [base64.b64encode(t.numpy().tobytes()).decode() for t in (v if isinstance(v, list) else [v])]
            for k, v in state.items()}


def set_rng_state(state: dict) -> None:
    def tensors(key):
        return [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in state[key]]

    torch.set_rng_state(tensors("torch")[0])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors("cuda"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer, state: dict, keep: int) -> Path:
    """Write the checkpoint for ``state["step"]`` and make it the latest."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state['step']:06d}"
    if not final.exists():
        tmp = root / f".tmp-{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(model, tmp)
        atomic_write(tmp / OPTIMIZER, lambda f: torch.save(optimizer.state_dict(), f))
        atomic_write_text(tmp / STATE, json.dumps({**state, "rng": rng_state()}) + "\n")
        os.rename(tmp, final)
        _fsync_dir(root)
    atomic_write_text(root / LATEST, final.name + "\n")
    for old in sorted(root.glob("step-*"))[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(run_dir: Path, model: nn.Module, optimizer) -> dict | None:
    """Restore model, optimizer and RNG from the latest checkpoint; returns the trainer
    state, or None when the run has no checkpoint yet."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return None
    load_weights(model, ckpt / "model.safetensors")
    try:
        optimizer.load_state_dict(torch.load(ckpt / OPTIMIZER, weights_only=True, map_location="cpu"))
        state = json.loads((ckpt / STATE).read_text())
    except Exception as e:  # truncated or garbled files fail in many ways; all mean the same
        raise CheckpointError(
            f"checkpoint {ckpt} is incomplete or corrupt ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120]}); point "
            f"{ckpt.parent / LATEST} at an older step-* directory, or start a fresh run"
        ) from e
    set_rng_state(state.pop("rng"))
    return state
