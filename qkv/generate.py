"""Sampling text from a causal language model: greedy, temperature, top-k, top-p.

Generation never runs past the prompt limit silently: a prompt longer than the model's
context is an error. Once prompt plus generated tokens exceed the context, the model sees
a sliding window of its last ``block_size`` tokens (as nanoGPT does).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Pick one token per row of ``logits`` (batch, vocab); temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = probs.cumsum(dim=-1) - probs > top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


@torch.no_grad()
def stream(model, input_ids: Tensor, max_new_tokens: int, *, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None,
           eos_token_id: int | None = None, seed: int | None = None) -> Iterator[Tensor]:
    """Yield each new column of tokens (batch,) as it is produced. Stops after
    ``max_new_tokens`` or when every row has produced ``eos_token_id``."""
    check_sampling(temperature, top_k, top_p)
    block_size = model.config.block_size
    if input_ids.dim() != 2 or input_ids.size(1) == 0:
        raise ValueError(f"input_ids must be (batch, prompt_len) with a non-empty prompt, got {tuple(input_ids.shape)}")
    if input_ids.size(1) > block_size:
        raise ValueError(f"the prompt has {input_ids.size(1)} tokens but the model's context is "
                         f"{block_size}; shorten the prompt")
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    ids = input_ids.to(device)
    finished = torch.zeros(ids.size(0), dtype=torch.bool, device=device)
    model.eval()
    for _ in range(max_new_tokens):
        logits = model(ids[:, -block_size:])[:, -1, :]
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            nxt = nxt.masked_fill(finished, eos_token_id)
            finished |= nxt == eos_token_id
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        yield nxt
        if eos_token_id is not None and bool(finished.all()):
            return


def generate(model, input_ids: Tensor, max_new_tokens: int, **kwargs) -> Tensor:
    """Prompt plus generated tokens, (batch, prompt_len + new)."""
    new = list(stream(model, input_ids, max_new_tokens, **kwargs))
    device = next(model.parameters()).device
    return torch.cat([input_ids.to(device), *(t[:, None] for t in new)], dim=1)
