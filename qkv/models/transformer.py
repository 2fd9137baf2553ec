"""The encoder-decoder Transformer of Vaswani et al. (2017), "Attention Is All You Need".

Token embeddings shared by source, target and output layer, scaled by sqrt(d_model)
(Section 3.4), plus sinusoidal positions (Section 3.5); N encoder layers (self-attention +
feed-forward) and N decoder layers (masked self-attention + encoder-decoder attention +
feed-forward), each sub-layer as LayerNorm(x + Sublayer(x)) (post-LN, Section 3.1), or
pre-LN as an option; a final linear layer tied to the embeddings and a softmax. Every layer
is a ``qkv.nn.Block``. Top-level names follow Hugging Face's ``MarianMTModel`` (shared,
encoder.layers, decoder.layers, lm_head, final_logits_bias), see ``qkv/interop/marian.py``.

Decoding (``qkv.generate.translate``) goes through ``start_decoding``, ``decode_step`` and
``reorder_state``: the encoder runs once, the cross-attention keys/values are computed
once per source, and the decoder's self-attention reads a KV cache.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..nn import ACTIVATIONS, Block, KVCache, SinusoidalPositions, padding_mask

PRESETS = {  # Table 3 of the paper, and a size that trains on a 2-core CPU
    "transformer-base": dict(d_model=512, encoder_layers=6, decoder_layers=6, n_head=8, ffn_dim=2048, dropout=0.1),
    "transformer-big": dict(d_model=1024, encoder_layers=6, decoder_layers=6, n_head=16, ffn_dim=4096, dropout=0.3),
    "transformer-small": dict(d_model=256, encoder_layers=3, decoder_layers=3, n_head=4, ffn_dim=1024, dropout=0.1),
}


@dataclass
class TransformerConfig:
    vocab_size: int = 32000          # one joint source/target vocabulary
    max_position_embeddings: int = 512  # the longest source, and the longest target
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    n_head: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1             # on embeddings + positions, attention weights and sub-layer outputs
    activation: str = "relu"
    norm_first: bool = False         # False: post-LN as in the paper; True: pre-LN (+ final LayerNorms)
    scale_embedding: bool = True     # multiply embeddings by sqrt(d_model)
    interleaved_positions: bool = True  # sin/cos interleaved (paper); False: halves (Marian)
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 0
    bos_token_id: int = 1            # the decoder's start token
    eos_token_id: int = 2

    def __post_init__(self):
        for name in ("vocab_size", "max_position_embeddings", "d_model", "encoder_layers",
                     "decoder_layers", "n_head", "ffn_dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.d_model % self.n_head or self.d_model % 2:
            raise ValueError(f"d_model={self.d_model} must be even and divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name}={getattr(self, name)} is outside the vocabulary (0..{self.vocab_size - 1})")


@dataclass
class DecodingState:
    """What ``decode_step`` needs: the source mask, each decoder layer's cross-attention
    keys/values (computed once) and the decoder self-attention KV cache."""
    source_mask: Tensor | None
    cross_kv: list[tuple[Tensor, Tensor]]
    cache: KVCache


class Stack(nn.Module):
    """N Blocks, and for pre-LN the final LayerNorm their output needs."""

    def __init__(self, c: TransformerConfig, n: int, cross: bool):
        super().__init__()
        self.layers = nn.ModuleList(
            Block(c.d_model, c.n_head, c.ffn_dim, cross_attention=cross, norm_first=c.norm_first,
                  act=c.activation, dropout=c.dropout, eps=c.layer_norm_eps) for _ in range(n))
        self.ln_f = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.norm_first else nn.Identity()


class Transformer(nn.Module):
    config_class = TransformerConfig
    model_type = "transformer"
    role = "seq2seq"
    presets = PRESETS

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = c = config
        self.shared = nn.Embedding(c.vocab_size, c.d_model)
        self.positions = SinusoidalPositions(c.max_position_embeddings, c.d_model,
                                             interleaved=c.interleaved_positions)
        self.drop = nn.Dropout(c.dropout)
        self.encoder = Stack(c, c.encoder_layers, cross=False)
        self.decoder = Stack(c, c.decoder_layers, cross=True)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.shared.weight  # Section 3.4: one matrix for all three
        self.register_buffer("final_logits_bias", torch.zeros(1, c.vocab_size))  # Marian's; zero here
        for name, p in self.named_parameters():
            if name == "shared.weight":
                nn.init.normal_(p, std=c.d_model ** -0.5)  # so that sqrt(d_model) * embedding is ~unit scale
            elif p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)

    def embed(self, ids: Tensor, offset: int = 0) -> Tensor:
        """Scaled token embeddings plus sinusoidal positions ``offset .. offset + T - 1``."""
        if ids.dim() != 2 or ids.dtype not in (torch.long, torch.int32):
            raise ValueError(f"token ids must be an integer tensor (batch, length), got {ids.dtype} {tuple(ids.shape)}")
        if offset + ids.size(1) > self.config.max_position_embeddings:
            raise ValueError(f"a sequence of {offset + ids.size(1)} tokens exceeds the model's "
                             f"max_position_embeddings={self.config.max_position_embeddings}; shorten it")
        scale = math.sqrt(self.config.d_model) if self.config.scale_embedding else 1.0
        return self.drop(self.shared(ids) * scale + self.positions(ids.size(1), offset))

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Encoder output (B, S, d_model); ``attention_mask`` (B, S): 1 = token, 0 = padding."""
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
        mask = padding_mask(attention_mask) if attention_mask is not None else None
        x = self.embed(input_ids)
        for block in self.encoder.layers:
            x, _ = block(x, mask)
        return self.encoder.ln_f(x)

    def decode(self, decoder_input_ids: Tensor, memory: Tensor | None, source_mask: Tensor | None,
               cache: KVCache | None = None, cross_kv: list | None = None) -> Tensor:
        """Decoder output (B, T, d_model): masked self-attention over the target so far (and
        ``cache``), attention over ``memory`` (or its precomputed ``cross_kv``)."""
        past = cache.length if cache is not None else 0
        if cache is not None:
            cache.check_room(decoder_input_ids.size(1))
        x = self.embed(decoder_input_ids, past)
        for i, block in enumerate(self.decoder.layers):
            x, _ = block(x, is_causal=True, context=memory, context_mask=source_mask,
                         cache=cache.layers[i] if cache is not None else None,
                         context_kv=cross_kv[i] if cross_kv is not None else None)
        if cache is not None:
            cache.advance(decoder_input_ids.size(1))
        return self.decoder.ln_f(x)

    def logits(self, h: Tensor) -> Tensor:
        return self.lm_head(h) + self.final_logits_bias

    def forward(self, input_ids: Tensor, decoder_input_ids: Tensor,
                attention_mask: Tensor | None = None) -> Tensor:
        """Teacher-forced logits (B, T, vocab) of the next target token at each position."""
        memory = self.encode(input_ids, attention_mask)
        source_mask = padding_mask(attention_mask) if attention_mask is not None else None
        return self.logits(self.decode(decoder_input_ids, memory, source_mask))

    forward_features = encode

    # -- the decoding protocol (qkv.generate.translate) -------------------------------------
    def start_decoding(self, input_ids: Tensor, attention_mask: Tensor | None,
                       max_new_tokens: int) -> DecodingState:
        memory = self.encode(input_ids, attention_mask)
        c, p = self.config, self.shared.weight
        cache = KVCache(c.decoder_layers, input_ids.size(0), c.n_head, c.d_model // c.n_head,
                        min(max_new_tokens, c.max_position_embeddings), p.device, p.dtype)
        cross_kv = [block.crossattention.context_kv(memory) for block in self.decoder.layers]
        mask = padding_mask(attention_mask) if attention_mask is not None else None
        return DecodingState(mask, cross_kv, cache)

    def decode_step(self, state: DecodingState, tokens: Tensor) -> tuple[Tensor, DecodingState]:
        h = self.decode(tokens[:, None], None, state.source_mask, state.cache, state.cross_kv)
        return self.logits(h[:, -1]), state

    def reorder_state(self, state: DecodingState, index: Tensor) -> DecodingState:
        state.cache.reorder(index)
        mask = state.source_mask.index_select(0, index) if state.source_mask is not None else None
        cross_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in state.cross_kv]
        return DecodingState(mask, cross_kv, state.cache)

    def save_hf(self, path, tokenizer=None) -> None:
        """Write a Hugging Face MarianMTModel directory (config.json + model.safetensors)."""
        from ..interop import save_hf

        save_hf(self, path, tokenizer)
