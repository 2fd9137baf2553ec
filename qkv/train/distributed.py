"""More than one process: torchrun starts them, ``torch.distributed`` connects them.

qkv has no launcher of its own. ``torchrun --nproc_per_node=N -m qkv train CONFIG`` (or
``qkv train CONFIG --nproc N``, which calls torchrun) starts N copies of the same
command; torchrun sets RANK, WORLD_SIZE and LOCAL_RANK, and ``setup`` below joins the
process group (gloo on CPU, NCCL on CUDA). Every rank builds the same model from the same
seed; the Trainer wraps it in DistributedDataParallel and gives each rank its own slice
of every global batch, so N processes compute what one process computes with the same
``train.batch_size`` (see ``Trainer``). Only rank 0 writes files and prints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


class DistributedFailure(RuntimeError):
    """Another process of the job died or could not be reached."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place in the job, from torchrun's environment (one process if unset)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group (once) and pick this rank's device: cuda:LOCAL_RANK on GPUs."""
    w = world()
    if not w.enabled:
        return w, device
    if device.type == "cuda":
        device = torch.device("cuda", w.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return w, device


def shard(model: torch.nn.Module) -> None:
    """FSDP2: each transformer block is one unit (its parameters gathered for its forward and
    backward, then freed); the root unit holds the rest (embeddings, final norm, head)."""
    from torch.distributed.fsdp import fully_shard

    from ..nn import Block

    blocks = [m for m in model.modules() if isinstance(m, Block)]
    if not blocks:
        raise ValueError(f"train.strategy=\"fsdp\" shards transformer blocks; {type(model).__name__} has none")
    for block in blocks:
        fully_shard(block)
    fully_shard(model)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def lost_contact(e: BaseException) -> DistributedFailure:
    return DistributedFailure(
        f"rank {dist.get_rank() if dist.is_initialized() else '?'}: lost contact with another process "
        f"of the job ({type(e).__name__}: {str(e).splitlines()[0][:200]})")


def is_collective_failure(e: BaseException) -> bool:
    """gloo and NCCL report a dead peer as DistError or as a RuntimeError naming themselves."""
    return isinstance(e, dist.DistError) or any(k in str(e) for k in ("gloo", "NCCL", "Connection reset"))


def all_reduce(values: list[float], op=dist.ReduceOp.SUM) -> list[float]:
    """Reduce a few floats over all ranks (no-op in one process)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    try:
        dist.all_reduce(t, op=op)
    except Exception as e:
        raise lost_contact(e) from e
    return t.tolist()
