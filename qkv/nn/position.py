"""Absolute position information.

Learned positions are a plain ``nn.Embedding`` owned by the model (GPT-2's ``wpe``).
Sinusoidal positions are Section 3.5 of Vaswani et al. (2017):
PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).
Learned positions over a 2-D patch grid (ViT) move to another grid size by bicubic
interpolation (``interpolate_grid``; Dosovitskiy et al. 2021, Section 3.2).
Fixed 2-D sine positions of a (possibly padded) feature grid are DETR's
(``sine_positions_2d``; Carion et al. 2020, Appendix A.3); two-stage Deformable DETR embeds
its proposal boxes' coordinates the same way (``box_positions``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


def interpolate_grid(table: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                     prefix: int = 1) -> Tensor:
    """Resize learned 2-D positions ``table`` (1, prefix + h*w, dim), laid out row-major
    over an ``old_grid`` (h, w) of patches, to ``new_grid`` by bicubic interpolation
    (align_corners=False). The first ``prefix`` rows (ViT's [CLS]) are kept as they are."""
    if table.size(1) != prefix + old_grid[0] * old_grid[1]:
        raise ValueError(f"a table of {table.size(1)} positions is not {prefix} + a {old_grid[0]}x{old_grid[1]} grid")
    if tuple(new_grid) == tuple(old_grid):
        return table
    head, grid = table[:, :prefix], table[:, prefix:]
    grid = grid.reshape(1, *old_grid, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    return torch.cat([head, grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


def sine_positions_2d(mask: Tensor, dim: int, *, temperature: float = 10000.0, normalize: bool = True,
                      scale: float = 2 * math.pi, offset: float = 0.0, eps: float = 1e-6) -> Tensor:
    """Fixed 2-D sine positions of a feature grid: DETR's ``PositionEmbeddingSine`` (Carion et
    al., 2020, "End-to-End Object Detection with Transformers", Appendix A.3: "for both spatial
    coordinates of each embedding we independently use d/2 sine and cosine functions with
    different frequencies. We then concatenate them to get the final d channel positional
    encoding").

    mask (batch, height, width): True (or 1) on real cells, False on padding. A cell's y is
    the number of real cells above it and including it in its column (x: in its row), so
    padded images get the positions of their real part; with ``normalize`` they are
    rescaled to (0, ``scale``] by the column's (row's) real extent, after adding ``offset``
    (Deformable DETR uses -0.5: cell centres). Channel 2i of each half is
    sin(p / temperature^(2i/(dim/2))), channel 2i + 1 the cosine of the same.

    Returns (batch, dim, height, width), float32: dim/2 channels for y, then dim/2 for x.
    """
    if dim % 4:
        raise ValueError(f"2-D sine positions need dim divisible by 4 (sine and cosine for y and x), got {dim}")
    if mask.dim() != 3:
        raise ValueError(f"mask must be (batch, height, width), got shape {tuple(mask.shape)}")
    real = mask.to(torch.float32)
    y, x = real.cumsum(1), real.cumsum(2)
    if normalize:
        y = (y + offset) / (y[:, -1:, :] + eps) * scale
        x = (x + offset) / (x[:, :, -1:] + eps) * scale
    half = dim // 2
    freq = temperature ** (2 * (torch.arange(half, device=mask.device) // 2).to(torch.float32) / half)

    def waves(p: Tensor) -> Tensor:  # (B, H, W) -> (B, H, W, half): sin, cos, sin, cos, ...
        p = p[..., None] / freq
        return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=4).flatten(3)

    return torch.cat((waves(y), waves(x)), dim=3).permute(0, 3, 1, 2)


def box_positions(boxes: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sine embedding (B, Q, 2*dim) of box logits (B, Q, 4) (two-stage): dim/2 channels per coordinate."""
    n = dim // 2
    t = boxes.sigmoid()[..., None] * 2 * math.pi / temperature ** (2 * (torch.arange(n, device=boxes.device) // 2) / n)
    return torch.stack((t[..., 0::2].sin(), t[..., 1::2].cos()), dim=-1).flatten(2)
