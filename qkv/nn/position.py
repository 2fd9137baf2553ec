"""Absolute position information.

Learned positions are a plain ``nn.Embedding`` owned by the model (GPT-2's ``wpe``).
Sinusoidal positions are Section 3.5 of Vaswani et al. (2017):
PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_table(n_positions: int, dim: int, base: float = 10000.0, *,
                     interleaved: bool = True) -> Tensor:
    """(n_positions, dim) table with sines in even and cosines in odd channels; with
    ``interleaved=False``, sines in the first half and cosines in the second (Marian's
    layout: the same features, permuted)."""
    if dim % 2:
        raise ValueError(f"sinusoidal positions need an even dim, got {dim}")
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    inv_freq = torch.exp(-math.log(base) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    if not interleaved:
        return torch.cat([torch.sin(pos * inv_freq), torch.cos(pos * inv_freq)], dim=1).float()
    table = torch.empty(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)
    return table.float()


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal position encodings, added to token embeddings (not saved: a buffer
    recomputed from the config)."""

    def __init__(self, n_positions: int, dim: int, *, interleaved: bool = True):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(n_positions, dim, interleaved=interleaved),
                             persistent=False)

    def forward(self, seq_len: int, offset: int = 0) -> Tensor:
        if offset + seq_len > self.table.size(0):
            raise ValueError(
                f"sequence of {offset + seq_len} positions exceeds the {self.table.size(0)} "
                "this model was built for"
            )
        return self.table[offset : offset + seq_len]
