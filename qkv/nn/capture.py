"""Seeing inside any qkv model: the attention weights and hidden states of chosen layers.

One mechanism for every model. ``capture(model)`` marks the chosen ``MultiHeadAttention``
modules (their ``captured`` list; only those switch to the explicit attention path, the
rest keep SDPA's fused kernel) and hooks the chosen layers' outputs; the model's forward
is not changed and its outputs are the same. Layers are chosen by module name, with shell
patterns (``"transformer.h.*.attn"``, ``"*crossattention"``); ``layer_names(model)`` lists
them.

    with capture(model) as seen:
        model(ids)
    seen.attentions["transformer.h.0.attn"][0]   # (batch, heads, queries, keys), first call
    seen.hidden["transformer.h.0"][0]            # (batch, tokens, width)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Iterator, Sequence

from torch import Tensor, nn

from .attention import MultiHeadAttention
from .blocks import Block

LAYERS: list[type] = [Block]  # the residual layers whose outputs are hidden states


def hidden_layer(cls: type) -> type:
    """Class decorator: a model's own residual layer (not a ``Block``, e.g. a ResNet block)
    whose outputs ``capture(hidden=...)`` records."""
    LAYERS.append(cls)
    return cls


@dataclass
class Captured:
    """What a ``capture`` saw, in module order; each forward call appends one tensor."""
    attentions: dict[str, list[Tensor]] = field(default_factory=dict)  # (B, H, Tq, Tk) per call
    hidden: dict[str, list[Tensor]] = field(default_factory=dict)      # (B, T, D) per call

    def maps(self, pattern: str = "*", call: int = 0) -> list[Tensor]:
        """The weights of every captured attention matching ``pattern``, in layer order."""
        return [calls[call] for name, calls in self.attentions.items() if fnmatch(name, pattern)]


def layer_names(model: nn.Module) -> dict[str, list[str]]:
    """The names ``capture`` selects from: attention modules and residual layers."""
    return {"attentions": [n for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)],
            "hidden": [n for n, m in model.named_modules() if isinstance(m, tuple(LAYERS))]}


def _chosen(name: str, patterns: Sequence[str] | str | None) -> bool:
    if patterns is None:
        return False
    return any(fnmatch(name, p) for p in ([patterns] if isinstance(patterns, str) else patterns))


@contextlib.contextmanager
def capture(model: nn.Module, attentions: Sequence[str] | str | None = "*",
            hidden: Sequence[str] | str | None = None) -> Iterator[Captured]:
    """Record the attention weights of the attention modules whose names match
    ``attentions`` and the outputs of the layers matching ``hidden`` (None: none)."""
    seen, hooks, marked = Captured(), [], []
    try:
        for name, module in model.named_modules():
            if isinstance(module, MultiHeadAttention) and _chosen(name, attentions):
                module.captured = seen.attentions.setdefault(name, [])
                marked.append(module)
            if isinstance(module, tuple(LAYERS)) and _chosen(name, hidden):
                calls = seen.hidden.setdefault(name, [])
                hooks.append(module.register_forward_hook(
                    lambda _m, _i, out, calls=calls: calls.append((out[0] if isinstance(out, tuple) else out).detach())))
        if not marked and not hooks:
            raise ValueError(f"no layer of {type(model).__name__} matches attentions={attentions!r}, "
                             f"hidden={hidden!r}; qkv.nn.layer_names(model) lists them")
        yield seen
    finally:
        for module in marked:
            module.captured = None
        for hook in hooks:
            hook.remove()
