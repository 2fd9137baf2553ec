"""Attention inside local windows of a 2-D token grid (Liu et al., 2021, Swin, Section 3.2).

A (B, H, W, C) grid is cut into non-overlapping m x m windows, each a sequence of m*m
tokens for ``MultiHeadAttention`` (``partition``; ``unpartition`` puts them back). Rolling
the grid by ``shift`` before cutting makes windows that straddle the previous ones; at the
border such a window holds regions that were not neighbours before the roll, and
``shifted_window_mask`` (boolean, True = may attend, as every mask in qkv) keeps them
apart (Figure 4). ``relative_position_index`` maps each pair of a window's tokens to the
row of a learned (2M-1)^2 bias table for their offset (Eq. 4, B).
"""
from __future__ import annotations

import torch
from torch import Tensor


def partition(x: Tensor, m: int) -> Tensor:
    """(B, H, W, C) -> (B * windows, m * m, C): windows in row-major order, tokens too."""
    b, h, w, c = x.shape
    return x.view(b, h // m, m, w // m, m, c).transpose(2, 3).reshape(-1, m * m, c)


def unpartition(windows: Tensor, m: int, h: int, w: int) -> Tensor:
    """The inverse of ``partition``: (B * windows, m * m, C) -> (B, H, W, C)."""
    c = windows.size(-1)
    return windows.view(-1, h // m, w // m, m, m, c).transpose(2, 3).reshape(-1, h, w, c)


def shifted_window_mask(h: int, w: int, m: int, shift: int, device=None) -> Tensor:
    """(windows, m*m, m*m), True = may attend, for an h x w grid rolled up and left by
    ``shift``: along each axis, positions [0, n-m), [n-m, n-shift) and [n-shift, n) are
    three regions, and a token may attend only the tokens of its own region."""
    def region(n: int) -> Tensor:
        i = torch.arange(n, device=device)
        return (i >= n - m).long() + (i >= n - shift).long()
    label = partition((region(h)[:, None] * 3 + region(w)[None, :])[None, :, :, None], m)[..., 0]
    return label[:, :, None] == label[:, None, :]


def relative_position_index(m: int, table_window: int | None = None) -> Tensor:
    """(m*m, m*m): for each pair of tokens of an m x m window, the row of a (2M-1)^2 table
    (M = ``table_window``, default m; rows ordered by vertical, then horizontal offset)."""
    big = m if table_window is None else table_window
    coords = torch.stack(torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")).flatten(1)
    dy, dx = (coords[:, :, None] - coords[:, None, :]) + big - 1
    return dy * (2 * big - 1) + dx
