"""The layers every Transformer stacks: position-wise feed-forward and the residual block.

``Block`` is one layer of Section 3.1 of Vaswani et al. (2017): self-attention, an
optional encoder-decoder (cross) attention, and a feed-forward network, each sub-layer
wrapped in a residual connection and a LayerNorm. ``norm_first=False`` is the paper's
post-LN, LayerNorm(x + Sublayer(x)) (also BERT); ``norm_first=True`` is pre-LN,
x + Sublayer(LayerNorm(x)) (GPT-2, ViT). An encoder layer is a Block; a decoder layer is a
Block with ``cross_attention=True`` called with ``is_causal=True``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiHeadAttention

# Names as Hugging Face configs spell them ("activation_function", "hidden_act").
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # GELU's sigmoid approximation (ImageGPT)
}
NORMS = ("layernorm", "rmsnorm")


def norm_layer(kind: str, dim: int, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    """LayerNorm (Ba et al., 2016), or ``"rmsnorm"``: x / sqrt(mean(x^2) + eps) * g, without
    mean subtraction or bias (Zhang & Sennrich, 2019; ImageGPT's "LayerNorm")."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


class FeedForward(nn.Module):
    """FFN(x) = act(x W1 + b1) W2 + b2 (Eq. 2), with dropout on the output."""

    def __init__(self, dim: int, hidden: int, *, act: str = "gelu", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden, bias=bias)
        self.act = activation(act)
        self.c_proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        out = self.c_proj(self.act(self.c_fc(x)))
        return self.dropout(out) if self.training else out  # eval: not even a call (decoding is per token)


class Block(nn.Module):
    """One Transformer layer (names follow Hugging Face GPT-2: ln_1, attn, ln_2, mlp)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int | None = None,
        *,
        cross_attention: bool = False,
        norm_first: bool = True,
        act: str = "gelu",
        bias: bool = True,
        dropout: float = 0.0,
        eps: float = 1e-5,
        attn_scale: float | None = None,
        norm: str = "layernorm",
    ):
        super().__init__()
        self.norm_first = norm_first
        self.ln_1 = norm_layer(norm, dim, eps, bias)
        self.attn = MultiHeadAttention(dim, num_heads, bias=bias, dropout=dropout, scale=attn_scale)
        if cross_attention:
            self.ln_cross_attn = norm_layer(norm, dim, eps, bias)
            self.crossattention = MultiHeadAttention(
                dim, num_heads, cross=True, bias=bias, dropout=dropout, scale=attn_scale
            )
        self.ln_2 = norm_layer(norm, dim, eps, bias)
        self.mlp = FeedForward(dim, mlp_dim or 4 * dim, act=act, bias=bias, dropout=dropout)

    def _residual(self, x: Tensor, norm: nn.LayerNorm, sublayer) -> tuple[Tensor, Tensor | None]:
        if self.norm_first:
            out, weights = sublayer(norm(x))
            return x + out, weights
        out, weights = sublayer(x)
        return norm(x + out), weights

    def step(self, x: Tensor, cache, mask: Tensor | None = None) -> Tensor:
        """One new position per row, x (B, dim), after the positions this layer's ``cache``
        holds: ``forward(x[:, None], mask, is_causal=True, cache=cache)[0][:, 0]`` in fewer
        calls, for decoding a pre-LN decoder-only stack (GPT), which runs it once per token and
        layer. mask: boolean (B, 1, 1, past + 1), True = may attend."""
        if not self.norm_first or hasattr(self, "crossattention"):
            raise ValueError("Block.step decodes pre-LN self-attention blocks only; call forward with a cache")
        x = x + self.attn.step(self.ln_1(x), cache, mask)
        return x + self.mlp(self.ln_2(x))

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        is_causal: bool = False,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        need_weights: bool = False,
        cache=None,
        context_kv: tuple[Tensor, Tensor] | None = None,
        pos: Tensor | None = None,
        context_pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Returns (x, self-attention weights or None). ``cache``: this layer's KV cache;
        ``context_kv``: the context's cross-attention keys/values, computed once
        (``crossattention.context_kv``) instead of from ``context`` at every step.
        ``pos``: positions added to the queries and keys of self-attention and to the queries
        of cross-attention; ``context_pos``: added to the cross-attention keys (DETR; never
        to values, see ``MultiHeadAttention``)."""
        x, weights = self._residual(
            x, self.ln_1,
            lambda h: self.attn(h, mask=mask, is_causal=is_causal, need_weights=need_weights, cache=cache, pos=pos),
        )
        if context is not None or context_kv is not None:
            x, _ = self._residual(
                x, self.ln_cross_attn,
                lambda h: self.crossattention(h, context, context_mask, kv=context_kv, pos=pos,
                                              context_pos=context_pos),
            )
        x, _ = self._residual(x, self.ln_2, lambda h: (self.mlp(h), None))
        return x, weights
