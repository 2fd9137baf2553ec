"""Attention masks, in one convention from data to kernel: boolean, True = may attend.

Masks broadcast against attention scores of shape (batch, heads, q_len, k_len).
"""
from __future__ import annotations

import torch
from torch import Tensor


def causal_mask(q_len: int, k_len: int | None = None, device=None) -> Tensor:
    """(q_len, k_len) lower-triangular mask, aligned bottom-right.

    Query i sits at absolute position ``k_len - q_len + i`` and may attend keys at or before
    it, so the same mask serves a full sequence (q_len == k_len) and a chunk decoded after a
    cached prefix (q_len < k_len).
    """
    k_len = q_len if k_len is None else k_len
    if k_len < q_len:
        raise ValueError(f"causal_mask: k_len={k_len} is shorter than q_len={q_len}")
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)


def padding_mask(attention_mask: Tensor) -> Tensor:
    """(batch, k_len) with 1/True for real tokens -> (batch, 1, 1, k_len) boolean key mask."""
    if attention_mask.dim() != 2:
        raise ValueError(
            f"attention_mask must be (batch, seq_len), got shape {tuple(attention_mask.shape)}"
        )
    return attention_mask.bool()[:, None, None, :]


def combine(*masks: Tensor | None) -> Tensor | None:
    """Logical AND of the masks given (None means "no restriction")."""
    out = None
    for m in masks:
        if m is not None:
            out = m if out is None else out & m
    return out
