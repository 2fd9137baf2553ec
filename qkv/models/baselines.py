"""The RNN the Transformer is measured against: an LSTM encoder-decoder with attention.

A bidirectional LSTM reads the source; a unidirectional LSTM decoder, started from the
encoder's final states, reads the target, and each of its top-layer states h_t attends
over the encoder's outputs m_s (global attention, Luong et al. 2015, "Effective
Approaches to Attention-based Neural Machine Translation"):

    a_t(s)  = softmax_s score(h_t, m_s)          (7)
    c_t     = sum_s a_t(s) m_s
    h~_t    = tanh(W_c [c_t; h_t])               (5)
    p(y_t)  = softmax(W_s h~_t)                  (6)

with ``score = h_t^T W_a m_s`` ("general", Luong) or ``v^T tanh(W_1 h_t + W_2 m_s)``
("additive", the score of Bahdanau et al. 2015). Input feeding is left out, so that
teacher-forced training runs the decoder as one LSTM call rather than a Python loop over
time steps; the decoder is otherwise the paper's. Source and target share one joint
vocabulary and one embedding, which is also the output projection (tied), as in the
Transformer it is compared with.

The decoding protocol is the Transformer's (``start_decoding``, ``decode_step``,
``reorder_state``), so greedy and beam search decode both models with the same code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

ATTENTION_SCORES = ("general", "additive")


@dataclass
class LSTMSeq2SeqConfig:
    vocab_size: int = 8000
    d_model: int = 256        # embedding size and the width of h~_t (tied output projection)
    hidden_size: int = 512    # decoder LSTM width; each encoder direction has half of it
    num_layers: int = 2       # in the encoder and in the decoder
    dropout: float = 0.1      # on embeddings, between LSTM layers and on h~_t
    attention: str = "general"  # general (Luong) | additive (Bahdanau's score)
    pad_token_id: int = 0
    bos_token_id: int = 1     # the decoder's start token
    eos_token_id: int = 2
    max_position_embeddings: int = 512  # longest sentence accepted: an RNN has no positions, but
                                        # the data filter and decoding apply one limit to every model

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "hidden_size", "num_layers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.hidden_size % 2:
            raise ValueError(f"hidden_size={self.hidden_size} must be even (the encoder is bidirectional)")
        if self.attention not in ATTENTION_SCORES:
            raise ValueError(f"attention must be one of {ATTENTION_SCORES}, got {self.attention!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name}={getattr(self, name)} is outside the vocabulary ({self.vocab_size})")


class DecoderState(NamedTuple):
    """What decoding carries from step to step; every field has the batch on ``batch_dims``."""
    memory: Tensor      # (B, S, H) encoder outputs m_s
    keys: Tensor        # (B, S, H) the source side of the score, computed once
    source_mask: Tensor  # (B, S) bool, True = a real source token
    h: Tensor           # (L, B, H) decoder LSTM state
    c: Tensor           # (L, B, H)

    batch_dims = (0, 0, 0, 1, 1)


class Attention(nn.Module):
    """Global attention over the encoder outputs; ``keys`` are computed once per source."""

    def __init__(self, hidden: int, score: str):
        super().__init__()
        self.score = score
        self.w_m = nn.Linear(hidden, hidden, bias=False)  # W_a (general) or W_2 (additive)
        if score == "additive":
            self.w_h = nn.Linear(hidden, hidden, bias=False)
            self.v = nn.Linear(hidden, 1, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        return self.w_m(memory)

    def forward(self, h: Tensor, memory: Tensor, keys: Tensor, source_mask: Tensor) -> Tensor:
        """h (B, T, H) -> contexts c_t (B, T, H)."""
        if self.score == "general":
            scores = h @ keys.transpose(1, 2)  # (B, T, S)
        else:
            scores = self.v(torch.tanh(self.w_h(h)[:, :, None] + keys[:, None])).squeeze(-1)
        scores = scores.masked_fill(~source_mask[:, None, :], float("-inf"))
        return scores.softmax(-1) @ memory


class LSTMSeq2Seq(nn.Module):
    config_class = LSTMSeq2SeqConfig
    model_type = "lstm_seq2seq"
    role = "seq2seq"

    def __init__(self, config: LSTMSeq2SeqConfig):
        super().__init__()
        self.config = c = config
        inner = c.dropout if c.num_layers > 1 else 0.0
        self.embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_token_id)
        self.encoder = nn.LSTM(c.d_model, c.hidden_size // 2, c.num_layers, batch_first=True,
                               bidirectional=True, dropout=inner)
        self.bridge_h = nn.Linear(c.hidden_size, c.hidden_size)  # encoder final -> decoder initial
        self.bridge_c = nn.Linear(c.hidden_size, c.hidden_size)
        self.decoder = nn.LSTM(c.d_model, c.hidden_size, c.num_layers, batch_first=True, dropout=inner)
        self.attention = Attention(c.hidden_size, c.attention)
        self.combine = nn.Linear(2 * c.hidden_size, c.d_model, bias=False)  # W_c
        self.drop = nn.Dropout(c.dropout)
        self.final_logits_bias = nn.Parameter(torch.zeros(c.vocab_size))
        nn.init.normal_(self.embed.weight, std=c.d_model ** -0.5)
        with torch.no_grad():
            self.embed.weight[c.pad_token_id].zero_()

    # -- encoder ---------------------------------------------------------------------------
    def _source_mask(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        if attention_mask is None:
            return torch.ones_like(input_ids, dtype=torch.bool)
        mask = attention_mask.bool()
        lengths = mask.sum(1)
        if (lengths == 0).any():
            raise ValueError("a source sentence has no tokens (its attention_mask is all zeros)")
        if not torch.equal(mask, torch.arange(mask.size(1), device=mask.device) < lengths[:, None]):
            raise ValueError("the LSTM encoder needs right-padded sources (attention_mask = 1s then 0s)")
        return mask

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> DecoderState:
        """Run the bidirectional encoder; returns the state the decoder starts from."""
        mask = self._source_mask(input_ids, attention_mask)
        lengths = mask.sum(1).cpu()
        packed = pack_padded_sequence(self.drop(self.embed(input_ids)), lengths, batch_first=True,
                                      enforce_sorted=False)
        out, (h, c) = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=input_ids.size(1))
        L, B = self.config.num_layers, input_ids.size(0)
        # (2L, B, H/2) -> (L, B, H): forward and backward final states of each layer, side by side
        h, c = (s.view(L, 2, B, -1).transpose(1, 2).reshape(L, B, -1) for s in (h, c))
        return DecoderState(memory, self.attention.keys(memory), mask,
                            torch.tanh(self.bridge_h(h)), self.bridge_c(c))

    # -- decoder ---------------------------------------------------------------------------
    def _decode(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """tokens (B, T) -> logits (B, T, V) and the state after the last of them."""
        out, (h, c) = self.decoder(self.drop(self.embed(tokens)), (state.h.contiguous(), state.c.contiguous()))
        context = self.attention(out, state.memory, state.keys, state.source_mask)
        attentional = self.drop(torch.tanh(self.combine(torch.cat([context, out], -1))))
        logits = attentional @ self.embed.weight.t() + self.final_logits_bias
        return logits, state._replace(h=h, c=c)

    def forward(self, input_ids: Tensor, decoder_input_ids: Tensor,
                attention_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing: logits (B, T, V) for the token after each decoder input."""
        return self._decode(decoder_input_ids, self.encode(input_ids, attention_mask))[0]

    # -- the decoding protocol shared with qkv.Transformer ---------------------------------
    def start_decoding(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                       max_new_tokens: int | None = None) -> DecoderState:
        return self.encode(input_ids, attention_mask)  # an RNN has no length limit to check

    def decode_step(self, state: DecoderState, tokens: Tensor) -> tuple[Tensor, DecoderState]:
        logits, state = self._decode(tokens[:, None], state)
        return logits[:, 0], state

    @staticmethod
    def reorder_state(state: DecoderState, index: Tensor) -> DecoderState:
        return DecoderState(*(t.index_select(dim, index) for t, dim in zip(state, DecoderState.batch_dims)))
