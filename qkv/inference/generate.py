"""Sampling text from a causal language model: greedy, temperature, top-k, top-p.

A prompt longer than the model's context is an error. Within the context, generation uses
a KV cache; once prompt plus generated tokens exceed it, the model sees a sliding window
of its last ``block_size`` tokens (as nanoGPT does), recomputed for each new token.

Decoding one token reads every weight matrix once for a row per sequence; the step is kept
lean (``model.step``: one position in the fewest calls, a preallocated cache written in place,
no autograd bookkeeping), and ``compile=True`` runs it through torch.compile
(``compiled_step``). ``matvec_layout`` lays the linear weights out (in, out) around
generations, for CPUs whose BLAS streams one-row products much faster from that layout.
"""
from __future__ import annotations

import contextlib
import math
import mmap
import warnings
import weakref
from typing import Iterator

import torch
from torch import Tensor, nn


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
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def check_prompt(input_ids: Tensor, attention_mask: Tensor | None, block_size: int) -> None:
    if input_ids.dim() != 2 or input_ids.size(1) == 0:
        raise ValueError(f"input_ids must be (batch, prompt_len) with a non-empty prompt, got {tuple(input_ids.shape)}")
    if input_ids.size(1) > block_size:
        raise ValueError(f"the prompt has {input_ids.size(1)} tokens but the model's context is "
                         f"{block_size}; shorten the prompt")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
        m = attention_mask.long()
        if (m[:, 1:] < m[:, :-1]).any() or (m[:, -1] == 0).any():
            raise ValueError("pad prompts on the left: attention_mask rows must be 0...0 1...1")


def _store(w: Tensor, transposed: bool, scratch: Tensor) -> Tensor:
    """``w`` (out, in) with its elements rewritten in place in its own storage, in row-major
    order of ``w.t()`` (transposed) or of ``w``, through ``scratch`` (at least w.numel())."""
    out, in_ = w.shape
    order = scratch[:w.numel()].view((in_, out) if transposed else (out, in_))
    order.copy_(w.t() if transposed else w)
    flat = w.as_strided((w.numel(),), (1,))  # the storage w occupies (contiguous one way or the other)
    flat.copy_(order.view(-1))
    return flat.as_strided((out, in_), (1, out) if transposed else (in_, 1))


@contextlib.contextmanager
def matvec_layout(model: nn.Module) -> Iterator[None]:
    """Within the block, the linear weights of ``model`` are stored transposed, (in, out)
    row-major, and laid back out as they were afterwards: the layout for decoding, which
    multiplies one row per sequence by every weight matrix. Generation does not use it by
    default: on these 2-core machines, idle, a chain of one-row products over
    benchmarks/gpt.py's weights took 3.1 ms per token from (in, out) weights and 3.3 ms
    through nn.Linear's (out, in) (2 threads), so laying the weights out and back (tens of
    ms) pays only over hundreds of tokens, or around many generations. Where a BLAS is
    much slower on (out, in) (2.5 vs 5.4 ms was once reported here), wrap generation in
    it; benchmarks/gpt.py times qkv with and without it, beside both floors.

    The parameters keep their shapes, values and identity: each becomes a column-major
    (out, in) tensor whose ``.t()`` (what F.linear multiplies by) is the contiguous
    (in, out) matrix, so every module computes what it did. Each matrix is rewritten in
    its own storage through one scratch matrix, so memory grows by one matrix for a
    moment, never by a second copy of the model. Left alone: weights off the CPU, a weight
    an embedding also reads (a tied output head: lookups want its rows, and it is the
    largest matrix, so the largest scratch) and one that shares its storage with another
    tensor. The layout is restored because training and safetensors want contiguous
    weights. Inside another such block it leaves the weights to that block.
    """
    holders: dict[int, set[int]] = {}  # storage -> the tensors of the model on it
    for t in (*model.parameters(), *model.buffers()):
        holders.setdefault(t.untyped_storage().data_ptr(), set()).add(id(t))
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    weights = {}
    for module in model.modules():
        w = getattr(module, "weight", None) if isinstance(module, nn.Linear) else None
        if (w is not None and id(w) not in embedded and w.device.type == "cpu" and w.dim() == 2
                and min(w.shape) > 1 and w.is_contiguous()
                and holders.get(w.untyped_storage().data_ptr()) == {id(w)}):
            weights[id(w)] = w
    weights = list(weights.values())

    def store_all(transposed: bool) -> None:
        if not weights:
            return
        # One scratch matrix for them all, in memory mapped from the OS for this call and
        # unmapped once freed: no heap memory stays behind (a malloc'd one could stay resident).
        nbytes = max(w.numel() * w.element_size() for w in weights)
        scratch = torch.frombuffer(mmap.mmap(-1, nbytes), dtype=torch.uint8)
        with torch.no_grad():
            for w in weights:
                w.data = _store(w.data, transposed, scratch.view(w.dtype))

    store_all(transposed=True)
    try:
        yield
    finally:
        store_all(transposed=False)


_COMPILED: weakref.WeakKeyDictionary[nn.Module, object] = weakref.WeakKeyDictionary()


def compiled_step(model):
    """``model.step`` through ``torch.compile`` (inductor; shapes dynamic, so one compilation
    serves batch 1 and one every other batch size, at any cache length), made on first use
    and kept while the model lives (not on it: copying or pickling the model is unaffected).
    Compiling takes seconds to tens of seconds; it fuses each layer's small operations (norms,
    the attention of one query, GELU, residual adds) into a few kernels, and with inductor's
    ``cpp_wrapper`` the code that calls them is C++ too, leaving one Python call per token.
    The weights stay inputs of the compiled graph, not constants: training the model further
    changes what it computes. Where compilation fails (no C++ compiler), this warns and the
    eager step takes over."""
    if model not in _COMPILED:
        owner = weakref.ref(model)  # the compiled function must not keep the model alive
        compiled = torch.compile(lambda *args: owner().step(*args), dynamic=True, options={"cpp_wrapper": True})

        def step(*args):
            try:
                return compiled(*args)
            except torch._dynamo.exc.TorchDynamoException as e:  # inductor too: no C++ compiler, unsupported op
                cause = getattr(e, "inner_exception", e)  # what the backend raised, e.g. no C++ compiler
                warnings.warn(f"torch.compile failed ({type(cause).__name__}: {' '.join(str(cause).split())[:300]}); "
                              "generating uncompiled")
                _COMPILED[owner()] = None  # eager from now on (a bound method here would keep the model alive)
                return owner().step(*args)

        _COMPILED[model] = step
    return _COMPILED[model] or model.step


@torch.no_grad()
def stream(model, input_ids: Tensor, max_new_tokens: int, *, attention_mask: Tensor | None = None,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           eos_token_id: int | None = None, seed: int | None = None,
           use_cache: bool = True, compile: bool = False) -> Iterator[Tensor]:
    """Yield each new column of tokens (batch,) as it is produced.

    Prompts of different lengths go in one batch left-padded, with ``attention_mask``
    (batch, prompt_len) 0 on the padding. Within the context, the KV cache makes each new
    token cost one position; past it, each token re-reads the last ``block_size`` tokens
    (``use_cache=False`` always does, and gives the same tokens). Stops after
    ``max_new_tokens`` or once every row has produced ``eos_token_id`` (then pads with it).
    Each cached token is one ``model.step``; ``compile=True`` runs it compiled
    (``compiled_step``): worth its compilation time over thousands of tokens.
    """
    check_sampling(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    block_size = model.config.block_size
    check_prompt(input_ids, attention_mask, block_size)
    model.check_head()
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    batch, prompt_len = input_ids.shape
    # every token so far, written in place (the prompt, then one column per step)
    ids = torch.empty(batch, prompt_len + max_new_tokens, dtype=input_ids.dtype, device=device)
    ids[:, :prompt_len] = input_ids
    mask = attention_mask.to(device) if attention_mask is not None else None
    cache = model.new_cache(batch, prompt_len + max_new_tokens) if use_cache else None
    finished = torch.zeros(batch, dtype=torch.bool, device=device)

    def next_logits(ids, mask, cache):  # the last position's logits only
        with torch.inference_mode():  # no autograd bookkeeping on the hot path
            return model.lm_head(model.forward_features(ids, attention_mask=mask, cache=cache)[:, -1])

    decode = compiled_step(model) if compile else model.step
    model.eval()
    logits = next_logits(ids[:, :prompt_len], mask, cache)
    for step in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            nxt = nxt.masked_fill(finished, eos_token_id)
            finished |= nxt == eos_token_id
        yield nxt
        if step == max_new_tokens - 1 or (eos_token_id is not None and bool(finished.all())):
            return
        n = prompt_len + step + 1  # tokens so far
        ids[:, n - 1] = nxt
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        if cache is not None and n <= block_size:
            with torch.inference_mode():
                logits = decode(nxt, cache, mask)
        else:  # past the context (or no cache): the last block_size tokens, from scratch
            window = mask[:, -block_size:] if mask is not None else None
            logits = next_logits(ids[:, max(0, n - block_size):n], window, None)


def generate(model, input_ids: Tensor, max_new_tokens: int, **kwargs) -> Tensor:
    """Prompt plus generated tokens, (batch, prompt_len + new); options as ``stream``."""
    # Written column by column into one tensor: holding every step's token until a final cat
    # would scatter hundreds of small long-lived blocks through the heap as it decodes (and
    # grow it by megabytes).
    out, n = None, 0
    for token in stream(model, input_ids, max_new_tokens, **kwargs):
        if out is None:  # (stream has checked the request by now)
            n = input_ids.size(1)
            dtype = torch.promote_types(input_ids.dtype, token.dtype)  # as torch.cat would
            out = torch.empty(token.size(0), n + max_new_tokens, dtype=dtype, device=token.device)
            out[:, :n] = input_ids
        out[:, n] = token
        n += 1
    return input_ids.to(next(model.parameters()).device) if out is None else out[:, :n]
