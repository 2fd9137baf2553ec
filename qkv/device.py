"""Which device a model runs on: a name a user gives (``auto``, ``cpu``, ``cuda``,
``cuda:1``, ``mps``) checked against what this machine has."""
from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """``auto`` is CUDA where there is a GPU, else the CPU. Anything else must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{option}={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{option}={name!r} but this machine has no CUDA GPU; use cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{option}={name!r} but this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{option}={name!r} but MPS is not available here; use cpu (or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{option}={name!r}: qkv runs on cpu, cuda or mps")
    return device
