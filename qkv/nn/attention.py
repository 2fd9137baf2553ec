"""Attention, written once for every qkv model.

``scaled_dot_product_attention`` is Eq. (1) of Vaswani et al. (2017),
Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V. Normal runs call PyTorch's fused
kernel; asking for the attention weights switches that one call to an eager path that
computes the same thing step by step and returns the weights too.

``MultiHeadAttention`` is Section 3.2.2: h heads, each attending in a d_model/h subspace,
concatenated and projected. It serves self-attention (one fused Q/K/V projection,
``c_attn``) and cross-attention (``q_attn`` on the queries, fused K/V ``c_attn`` on the
context); the names follow Hugging Face's GPT-2 so checkpoints convert by renaming.

Capturing: give a ``MultiHeadAttention`` a list as ``captured`` (``qkv.nn.capture`` does
this for chosen layers of any model) and each forward call appends its weights there,
computed on the explicit path; layers not captured keep the fused kernel.

Positions may enter the queries and keys only (``pos``, ``context_pos``), leaving the values
content alone, as DETR adds its 2-D sine and object-query positions in every layer.

An additive float ``bias`` on the scores (broadcast to (B, H, Tq, Tk)) serves models whose
scores carry learned terms, e.g. Swin's relative position bias (Liu et al., 2021, Eq. 4):
softmax(Q K^T / sqrt(d) + B) V. It combines with the boolean mask: masked pairs get -inf.

``KVCache`` holds the keys and values of tokens already decoded, so that generating a
token costs one position, not the whole prefix. It lives outside the model: generation
creates one and passes it in; training never sees it.
"""
from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masks import causal_mask, combine


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    need_weights: bool = False,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """q: (B, H, Tq, D), k/v: (B, H, Tk, D); mask: boolean, True = may attend; bias: float,
    added to the scaled scores before the softmax, (B or 1, H or 1, Tq, Tk).

    ``is_causal`` applies a bottom-right-aligned causal mask without materialising it on
    the fast path. Returns (output (B, H, Tq, D), weights (B, H, Tq, Tk) or None).
    """
    if is_causal and q.size(-2) == 1:  # one new query after a cached prefix sees every key
        is_causal = False
    if bias is not None:
        bias = bias.to(q.dtype)
    if not need_weights:
        if is_causal and (mask is not None or bias is not None):
            mask, is_causal = combine(mask, causal_mask(q.size(-2), k.size(-2), q.device)), False
        if is_causal and q.size(-2) != k.size(-2):
            # PyTorch aligns is_causal top-left; a chunk after a cached prefix needs bottom-right.
            mask, is_causal = causal_mask(q.size(-2), k.size(-2), q.device), False
        if bias is not None:  # one float mask: the bias where allowed, -inf elsewhere
            mask = bias if mask is None else torch.where(mask, bias, float("-inf"))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
        )
        return out, None
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias
    if is_causal:
        mask = combine(mask, causal_mask(q.size(-2), k.size(-2), q.device))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return dropped @ v, weights


class LayerKV:
    """One layer's slice of a KVCache."""

    def __init__(self, cache: "KVCache", shape: tuple[int, ...], device, dtype):
        self.cache = weakref.ref(cache)  # no reference cycle: the memory goes when generation drops the cache
        # empty, not zeros: only written positions are ever read, and untouched pages cost no memory
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new positions' keys/values (B, H, T, D); return all positions so far."""
        start, n = self.cache().length, k.size(2)
        self.k.narrow(2, start, n).copy_(k)
        self.v.narrow(2, start, n).copy_(v)
        return self.k.narrow(2, 0, start + n), self.v.narrow(2, 0, start + n)


class KVCache:
    """Preallocated keys and values for ``max_len`` positions of every layer.

    The model writes each layer's new positions through ``layers[i].update`` and then
    calls ``advance(n)`` once the new positions have passed through every layer.
    """

    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, max_len: int,
                 device=None, dtype=torch.float32):
        self.max_len, self.length = max_len, 0
        shape = (batch, n_heads, max_len, head_dim)
        self.layers = [LayerKV(self, shape, device, dtype) for _ in range(n_layers)]

    def check_room(self, n: int) -> None:
        if self.length + n > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {n} positions exceed its {self.max_len}")

    def advance(self, n: int) -> None:
        self.length += n

    def reorder(self, index: Tensor) -> None:
        """Keep (and repeat) the batch rows ``index`` (N',): beam search's reordering."""
        for layer in self.layers:
            layer.k, layer.v = layer.k.index_select(0, index), layer.v.index_select(0, index)


class MultiHeadAttention(nn.Module):
    """Multi-head attention over ``x`` (self) or over ``context`` (cross).

    dim: model width; num_heads must divide it. kv_dim: width of the context for
    cross-attention (defaults to dim). scale: multiplier on Q K^T (default 1/sqrt(head_dim)).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        cross: bool = False,
        kv_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        scale: float | None = None,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim, self.cross = num_heads, dim // num_heads, cross
        self.scale = scale
        if cross:
            self.q_attn = nn.Linear(dim, dim, bias=bias)
            self.c_attn = nn.Linear(kv_dim or dim, 2 * dim, bias=bias)
        else:
            self.c_attn = nn.Linear(dim, 3 * dim, bias=bias)
        self.c_proj = nn.Linear(dim, dim, bias=bias)
        self.attn_dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)
        self.captured: list[Tensor] | None = None  # a list: each call appends its weights (B, H, T, S)

    def _heads(self, t: Tensor) -> Tensor:  # (B, T, H*D) -> (B, H, T, D)
        return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    @staticmethod
    def _rows(linear: nn.Linear, t: Tensor, rows: slice) -> Tensor:
        """Some outputs of a fused projection (e.g. Q and K of Q/K/V), computed from ``t``."""
        return F.linear(t, linear.weight[rows], None if linear.bias is None else linear.bias[rows])

    def context_kv(self, context: Tensor, pos: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values (B, H, S, D) of ``context``: computed once per
        source and passed back as ``kv`` at every decoding step. ``pos`` (B or 1, S, kv_dim)
        is added to the context where it makes the keys, not the values (DETR)."""
        if pos is None:
            k, v = self.c_attn(context).chunk(2, dim=-1)
        else:
            d = self.num_heads * self.head_dim
            k = self._rows(self.c_attn, context + pos, slice(0, d))
            v = self._rows(self.c_attn, context, slice(d, 2 * d))
        return self._heads(k), self._heads(v)

    def step(self, x: Tensor, cache: LayerKV, mask: Tensor | None = None) -> Tensor:
        """Self-attention of one new position per row, x (B, dim), over the positions ``cache``
        holds and itself: ``forward(x[:, None], cache=cache, is_causal=True)[0][:, 0]`` in fewer
        calls, for decoding, which runs it once per token and layer. mask: boolean (B, 1, 1,
        past + 1), True = may attend (left padding); no weights are returned or captured."""
        if self.cross:
            raise ValueError("MultiHeadAttention.step is self-attention; cross-attention decodes through "
                             "forward with kv=context_kv(...)")
        q, k, v = self.c_attn(x).view(x.size(0), 3, self.num_heads, 1, self.head_dim).unbind(1)
        k, v = cache.update(k, v)  # (B, H, past + 1, D)
        out, _ = scaled_dot_product_attention(q, k, v, mask, scale=self.scale)
        return self.c_proj(out.view(x.shape))

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        is_causal: bool = False,
        need_weights: bool = False,
        cache: LayerKV | None = None,
        kv: tuple[Tensor, Tensor] | None = None,
        bias: Tensor | None = None,
        pos: Tensor | None = None,
        context_pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, T, dim); context: (B, S, kv_dim) for cross-attention; ``cache``: this
        layer's KV cache during generation (keys/values of earlier positions); ``kv``: the
        context's keys and values from ``context_kv`` (cross-attention during generation);
        ``bias``: float, added to the scores, (B or 1, H or 1, T, S).
        ``pos`` (B or 1, T, dim): positions added to ``x`` where it makes the queries (and, in
        self-attention, the keys), never the values; ``context_pos`` (B or 1, S, kv_dim): the
        same for the context's keys. This is DETR's attention (Carion et al., 2020, Appendix
        A.3): positions enter every layer's queries and keys; the values carry content only.

        Returns (output (B, T, dim), attention weights (B, H, T, S) or None).
        """
        if self.cross:
            if context is None and kv is None:
                raise ValueError("cross-attention needs a context tensor")
            q = self._heads(self.q_attn(x if pos is None else x + pos))
            k, v = kv if kv is not None else self.context_kv(context, context_pos)
        elif pos is None:
            # (B, T, 3*H*D) -> Q, K, V (B, H, T, D): the views chunk + _heads make, in five calls
            # instead of seven (each shows when decoding runs one token at a time). Unbinding the
            # Q/K/V axis before transposing keeps the backward to one copy, as chunk's was.
            q, k, v = (t.transpose(1, 2) for t in
                       self.c_attn(x).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(2))
        else:  # Q and K from x + pos, V from x: the same fused weights, in two products
            d = self.num_heads * self.head_dim
            q, k = self._rows(self.c_attn, x + pos, slice(0, 2 * d)).chunk(2, dim=-1)
            v = self._rows(self.c_attn, x, slice(2 * d, 3 * d))
            q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if cache is not None:
            k, v = cache.update(k, v)
        need_weights = need_weights or self.captured is not None
        out, weights = scaled_dot_product_attention(
            q,
            k,
            v,
            mask,
            is_causal=is_causal,
            dropout_p=self.attn_dropout if self.training else 0.0,
            scale=self.scale,
            need_weights=need_weights,
            bias=bias,
        )
        if self.captured is not None:
            self.captured.append(weights.detach())
        out = self.c_proj(out.transpose(1, 2).flatten(2))
        return (self.resid_dropout(out) if self.training else out), weights
