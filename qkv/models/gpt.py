"""GPT: a decoder-only Transformer language model (Radford et al., 2018/2019).

Token and learned position embeddings, a stack of pre-LN causal self-attention blocks,
a final LayerNorm and a linear head tied to the token embeddings. Parameter names follow
Hugging Face's ``GPT2LMHeadModel`` (transformer.wte, transformer.h.0.attn.c_attn, ...), so
conversion is a table of renames and transposes (``qkv/interop/gpt2.py``).

Two options serve ImageGPT (``qkv/models/igpt.py``) and leave GPT-2 as it was by default:
``norm = "rmsnorm"`` (no mean subtraction, no bias) and ``lm_head_size`` (a head over fewer
outputs than the vocabulary, or none).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import ACTIVATIONS, Block, KVCache, causal_mask, padding_mask
from ..nn.blocks import NORMS, norm_layer


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024  # the context: the most positions the model can see
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_inner: int | None = None  # feed-forward width; None = 4 * n_embd
    dropout: float = 0.0
    bias: bool = True
    activation: str = "gelu_new"  # GPT-2's tanh approximation of GELU
    layer_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    scale_attn_weights: bool = True  # divide Q K^T by sqrt(head_dim)
    scale_attn_by_inverse_layer_idx: bool = False  # and by layer index + 1 (GPT-2 option)
    norm: str = "layernorm"  # or "rmsnorm": x / sqrt(mean(x^2) + eps) * g (ImageGPT's LayerNorm)
    lm_head_size: int | None = None  # outputs of lm_head; None = vocab_size; 0 = no head (the trunk)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.lm_head_size is not None and (not isinstance(self.lm_head_size, int) or self.lm_head_size < 0):
            raise ValueError(f"lm_head_size must be an integer >= 0 (or unset: vocab_size), got {self.lm_head_size!r}")
        if self.tie_word_embeddings and self.lm_head_size not in (None, self.vocab_size):
            raise ValueError(f"a tied head has vocab_size={self.vocab_size} outputs, not lm_head_size="
                             f"{self.lm_head_size}; set tie_word_embeddings=false")

    @property
    def head_outputs(self) -> int:
        return self.vocab_size if self.lm_head_size is None else self.lm_head_size

    def attn_scale(self, layer: int) -> float:
        scale = 1.0 / math.sqrt(self.n_embd // self.n_head) if self.scale_attn_weights else 1.0
        return scale / (layer + 1) if self.scale_attn_by_inverse_layer_idx else scale


_GPT2 = dict(vocab_size=50257, block_size=1024)
PRESETS = {  # GPT-2's four sizes (Radford et al., 2019, Table 2)
    "gpt2": dict(_GPT2, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(_GPT2, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(_GPT2, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(_GPT2, n_layer=48, n_head=25, n_embd=1600),
}


class GPT(nn.Module):
    config_class = GPTConfig
    model_type = "gpt"
    role = "causal_lm"
    presets = PRESETS

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.n_embd),
            wpe=nn.Embedding(c.block_size, c.n_embd),
            drop=nn.Dropout(c.dropout),
            h=nn.ModuleList(
                Block(c.n_embd, c.n_head, c.n_inner or 4 * c.n_embd, norm_first=True, act=c.activation,
                      bias=c.bias, dropout=c.dropout, eps=c.layer_norm_eps, attn_scale=c.attn_scale(i),
                      norm=c.norm)
                for i in range(c.n_layer)
            ),
            ln_f=norm_layer(c.norm, c.n_embd, c.layer_norm_eps, c.bias),
        ))
        self.lm_head = nn.Linear(c.n_embd, c.head_outputs, bias=False) if c.head_outputs else None
        if c.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2L)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def check_input(self, input_ids: Tensor, past: int = 0) -> None:
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(
                f"input_ids must be an integer tensor of shape (batch, seq_len), got "
                f"{input_ids.dtype} of shape {tuple(input_ids.shape)}"
            )
        if past + input_ids.size(1) > self.config.block_size:
            raise ValueError(
                f"sequence of {past + input_ids.size(1)} tokens exceeds the model's context "
                f"(block_size={self.config.block_size}); shorten the input"
            )

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for generating ``batch`` sequences of up to ``max_len`` tokens."""
        c, p = self.config, self.transformer.wte.weight
        return KVCache(c.n_layer, batch, c.n_head, c.n_embd // c.n_head,
                       min(max_len or c.block_size, c.block_size), p.device, p.dtype)

    def forward_features(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                         attentions: list | None = None, cache: KVCache | None = None) -> Tensor:
        """Final hidden states (batch, time, n_embd), after ln_f.

        attention_mask: (batch, past + time), 1 for tokens and 0 for left padding; positions
            count real tokens only, so a left-padded row computes what it would alone.
        attentions: pass a list to receive each layer's attention weights (batch, heads,
            time, time); this switches attention to the eager path.
        cache: a KV cache holding earlier positions (generation); it is advanced.
        """
        past = cache.length if cache is not None else 0
        self.check_input(input_ids, past)
        if cache is not None:
            cache.check_room(input_ids.size(1))
        t, T = self.transformer, input_ids.size(1)
        mask, is_causal = None, True
        if attention_mask is None:
            pos = torch.arange(past, past + T, device=input_ids.device)
        else:
            if attention_mask.shape != (input_ids.size(0), past + T):
                raise ValueError(f"attention_mask must be (batch, {past + T}) = (batch, past + new "
                                 f"tokens), got {tuple(attention_mask.shape)}")
            valid = attention_mask.bool()
            pos = (valid.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            mask = causal_mask(T, past + T, input_ids.device) & padding_mask(valid)
            mask = mask | ~valid[:, None, past:, None]  # padding queries see all: no empty softmax
            is_causal = False
        x = t.wte(input_ids) + t.wpe(pos)
        if self.training:  # (in eval, Dropout is the identity: not even a call per generated token)
            x = t.drop(x)
        for i, block in enumerate(t.h):
            x, w = block(x, mask, is_causal=is_causal, need_weights=attentions is not None,
                         cache=cache.layers[i] if cache is not None else None)
            if attentions is not None:
                attentions.append(w)
        if cache is not None:
            cache.advance(T)
        return t.ln_f(x)

    def step(self, tokens: Tensor, cache: KVCache, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (batch, vocab) for one new token per row, tokens (batch,), after the positions
        ``cache`` holds; the cache is advanced. It computes ``forward(tokens[:, None],
        attention_mask, cache=cache)[:, -1]`` in fewer calls: generation runs it once per token.
        attention_mask: (batch, past + 1), as in ``forward_features``."""
        past, t = cache.length, self.transformer
        self.check_input(tokens[:, None], past)
        cache.check_room(1)
        if attention_mask is None:
            x, mask = t.wte(tokens) + t.wpe.weight[past], None
        else:
            valid = attention_mask.bool()
            x, mask = t.wte(tokens) + t.wpe(valid.sum(-1) - 1), valid[:, None, None, :]
        for block, layer in zip(t.h, cache.layers):
            x = block.step(x, layer, mask)
        cache.advance(1)
        return self.lm_head(t.ln_f(x))

    def check_head(self) -> None:
        if self.lm_head is None:
            raise ValueError("this model has no head (lm_head_size=0: a trunk, e.g. from an ImageGPTModel "
                             "checkpoint); use forward_features for its hidden states")

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                labels: Tensor | None = None, cache: KVCache | None = None):
        """Logits (batch, time, vocab); with ``labels`` (batch, time: the token that follows
        each position, already shifted; -100 = ignore), returns (logits, mean cross-entropy)."""
        self.check_head()
        h = self.forward_features(input_ids, attention_mask, cache=cache)
        logits = self.lm_head(h)
        if labels is None:
            return logits
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return logits, loss

    def generate(self, input_ids: Tensor, max_new_tokens: int, **kwargs) -> Tensor:
        """Prompt plus continuation; see ``qkv.inference.generate`` for the options."""
        from ..inference.generate import generate

        return generate(self, input_ids, max_new_tokens, **kwargs)

    def save_hf(self, path, tokenizer=None) -> None:
        """Write a Hugging Face GPT2LMHeadModel directory (config.json + model.safetensors)."""
        from ..interop import save_hf

        save_hf(self, path, tokenizer)
