"""Training checkpoints, written so that a crash at any instant leaves a loadable one.

``run_dir/checkpoints/step-000250/`` holds config.json, model.safetensors, optimizer.pt and
trainer_state.json (step, samples seen, RNG states). It is written under a temporary name
and renamed into place when complete; only then does ``checkpoints/latest`` (replaced
atomically) point at it. A half-written checkpoint is never named by ``latest``.
A run trained with FSDP keeps, instead of model.safetensors and optimizer.pt, a
``sharded/`` folder written by torch.distributed.checkpoint (each rank its shards);
``qkv.load`` and ``qkv export`` gather it into a whole model.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ..files import atomic_write, atomic_write_text, fsync_dir, make_dirs
from ..errors import CheckpointError
from ..io import LATEST, SHARDED, latest_checkpoint, load_weights, save_config, save_model
from .distributed import barrier

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


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer, state: dict, keep: int,
                    *, sharded: bool = False) -> Path:
    """Write the checkpoint for ``state["step"]`` and make it the latest. Called by every
    rank: with ``sharded`` (FSDP) each rank writes its shards of the model and optimizer
    with torch.distributed.checkpoint; otherwise rank 0 alone writes the whole model."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{state['step']:06d}"
    tmp = root / f".tmp-{final.name}"
    exists = final.exists()
    if _is_main() and not exists:
        make_dirs(root)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    if not exists:
        if sharded:
            model_state, optim_state = get_state_dict(model, optimizer)
            dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / SHARDED))
            barrier()
        if _is_main():
            if sharded:
                save_config(model, tmp)
            else:
                save_model(model, tmp)
                atomic_write(tmp / OPTIMIZER, lambda f: torch.save(optimizer.state_dict(), f))
            atomic_write_text(tmp / STATE, json.dumps({**state, "rng": rng_state()}) + "\n")
            os.rename(tmp, final)
            fsync_dir(root)
    if _is_main():
        atomic_write_text(root / LATEST, final.name + "\n")
        for old in sorted(root.glob("step-*"))[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _load_sharded(ckpt: Path, model: nn.Module, optimizer) -> None:
    """torch.distributed.checkpoint reshards on load: any number of ranks, or one process."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(ckpt / SHARDED), no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def load_checkpoint(run_dir: Path, model: nn.Module, optimizer, *, sharded: bool = False) -> dict | None:
    """Restore model, optimizer and RNG from the latest checkpoint; returns the trainer
    state, or None when the run has no checkpoint yet. A sharded (FSDP) checkpoint resumes
    on any number of processes; a whole one, on any number of DDP processes."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return None
    if sharded and not (ckpt / SHARDED).is_dir():
        raise CheckpointError(f"{ckpt} holds a whole model (a DDP or one-process run); resume it with "
                              "train.strategy=\"ddp\", or start a new FSDP run")
    try:
        if (ckpt / SHARDED).is_dir():
            _load_sharded(ckpt, model, optimizer)
        else:
            load_weights(model, ckpt / "model.safetensors")
            optimizer.load_state_dict(torch.load(ckpt / OPTIMIZER, weights_only=True, map_location="cpu"))
        state = json.loads((ckpt / STATE).read_text())
    except CheckpointError:
        raise
    except Exception as e:  # truncated or garbled files fail in many ways; all mean the same
        raise CheckpointError(
            f"checkpoint {ckpt} is incomplete or corrupt ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120]}); point "
            f"{ckpt.parent / LATEST} at an older step-* directory, or start a fresh run"
        ) from e
    set_rng_state(state.pop("rng"))
    return state
