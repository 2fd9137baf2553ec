"""BERT: a bidirectional Transformer encoder (Devlin et al., 2019).

Input (Section 3, Figure 2): the sum of word, learned position and token-type (segment)
embeddings, then LayerNorm and dropout. The encoder is a stack of post-LN ``qkv.nn``
Blocks, LayerNorm(x + Sublayer(x)), with GELU feed-forward layers and no causal mask:
every token attends to every non-padding token. Heads:

- ``mlm``: the masked-LM head of Section 3.1 (Task #1): dense + GELU + LayerNorm, then a
  decoder tied to the word embeddings plus an output bias; logits (batch, time, vocab).
- ``classifier``: the pooler (tanh of a dense layer on the [CLS] state) and a linear
  layer over ``num_labels`` classes (Section 4.1); logits (batch, num_labels).
- ``none``: the bare encoder (``BertModel``), e.g. for sentence embeddings.

Module names follow Hugging Face's ``BertModel`` (embeddings.word_embeddings, pooler.dense,
cls.predictions.transform, classifier) except inside the shared Blocks, so conversion is a
short rename table (``qkv/interop/bert.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import ACTIVATIONS, Block, padding_mask
from ..nn.blocks import activation

HEADS = ("mlm", "classifier", "none")


@dataclass
class BERTConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1             # embeddings, attention weights and residual branches
    classifier_dropout: float | None = None  # None = dropout
    pad_token_id: int = 0
    head: str = "mlm"                # mlm | classifier | none
    num_labels: int = 2              # classifier only
    add_pooler: bool = True          # the [CLS] pooler (BertModel has one; BertForMaskedLM not)

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.head == "classifier" and (self.num_labels < 2 or not self.add_pooler):
            raise ValueError("a classifier needs num_labels >= 2 and add_pooler = true")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unknown hidden_act {self.hidden_act!r}; choose one of {sorted(ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class MLMHead(nn.Module):
    """Transform (dense, activation, LayerNorm), then the tied decoder plus a bias."""

    def __init__(self, c: BERTConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = nn.ModuleDict(dict(dense=nn.Linear(c.hidden_size, c.hidden_size),
                                            LayerNorm=nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)))
        self.act = activation(c.hidden_act)
        self.decoder = nn.Linear(c.hidden_size, c.vocab_size)
        self.decoder.weight = word_embeddings.weight

    def forward(self, h: Tensor) -> Tensor:
        t = self.transform
        return self.decoder(t.LayerNorm(self.act(t.dense(h))))


_BERT = dict(vocab_size=30522, max_position_embeddings=512)
PRESETS = {  # Devlin et al. (2019), Section 3; MiniLM-L6 (all-MiniLM-L6-v2's shape)
    "bert-base": dict(_BERT, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(_BERT, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                       intermediate_size=4096),
    "minilm-l6": dict(_BERT, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}


class BERT(nn.Module):
    config_class = BERTConfig
    model_type = "bert"
    role = "text_encoder"  # a masked LM, a sequence classifier or bare features, by its head
    presets = PRESETS

    def __init__(self, config: BERTConfig):
        super().__init__()
        self.config = c = config
        self.embeddings = nn.ModuleDict(dict(
            word_embeddings=nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id),
            position_embeddings=nn.Embedding(c.max_position_embeddings, c.hidden_size),
            token_type_embeddings=nn.Embedding(c.type_vocab_size, c.hidden_size),
            LayerNorm=nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps),
            dropout=nn.Dropout(c.dropout),
        ))
        self.encoder = nn.ModuleDict(dict(layer=nn.ModuleList(
            Block(c.hidden_size, c.num_attention_heads, c.intermediate_size, norm_first=False,
                  act=c.hidden_act, dropout=c.dropout, eps=c.layer_norm_eps)
            for _ in range(c.num_hidden_layers)
        )))
        if c.add_pooler:
            self.pooler = nn.ModuleDict(dict(dense=nn.Linear(c.hidden_size, c.hidden_size)))
        if c.head == "mlm":
            self.cls = nn.ModuleDict(dict(predictions=MLMHead(c, self.embeddings.word_embeddings)))
        elif c.head == "classifier":
            self.classifier_dropout = nn.Dropout(c.dropout if c.classifier_dropout is None else c.classifier_dropout)
            self.classifier = nn.Linear(c.hidden_size, c.num_labels)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def check_input(self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None):
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor of shape (batch, seq_len), got "
                             f"{input_ids.dtype} of shape {tuple(input_ids.shape)}")
        if input_ids.size(1) > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {input_ids.size(1)} tokens exceeds the model's "
                             f"max_position_embeddings={self.config.max_position_embeddings}; "
                             "shorten the text (or ask for truncation)")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and t.shape != input_ids.shape:
                raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {tuple(t.shape)}")

    def forward_features(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                         token_type_ids: Tensor | None = None, *, attentions: list | None = None) -> Tensor:
        """Final hidden states (batch, time, hidden_size).

        attention_mask: (batch, time), 1 for tokens and 0 for padding (anywhere); padded
            keys are masked out, so padding never changes the states of real tokens.
        token_type_ids: (batch, time) segment ids (default 0: one segment).
        attentions: pass a list to receive each layer's attention weights (eager path).
        """
        self.check_input(input_ids, attention_mask, token_type_ids)
        e, T = self.embeddings, input_ids.size(1)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        pos = torch.arange(T, device=input_ids.device)
        x = e.word_embeddings(input_ids) + e.position_embeddings(pos) + e.token_type_embeddings(token_type_ids)
        x = e.dropout(e.LayerNorm(x))
        # No mask at all when nothing is padded keeps SDPA on its fused kernel.
        mask = None if attention_mask is None or bool(attention_mask.all()) else padding_mask(attention_mask)
        for block in self.encoder.layer:
            x, w = block(x, mask, need_weights=attentions is not None)
            if attentions is not None:
                attentions.append(w)
        return x

    def pooled(self, hidden: Tensor) -> Tensor:
        """tanh(W h_[CLS] + b): the pooler's sentence vector (batch, hidden_size)."""
        if not self.config.add_pooler:
            raise ValueError("this BERT has no pooler (add_pooler = false)")
        return torch.tanh(self.pooler.dense(hidden[:, 0]))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, *, labels: Tensor | None = None):
        """The head's logits: (batch, time, vocab) for mlm, (batch, num_labels) for a
        classifier. With ``labels`` (mlm: (batch, time), -100 = not predicted; classifier:
        (batch,)), returns (logits, mean cross-entropy loss); for mlm those logits are the
        predicted positions' only, (n_selected, vocab): the vocabulary projection, the
        largest matrix product, is skipped where nothing is predicted."""
        head = self.config.head
        if head == "none":
            raise ValueError("this BERT has no head (head = \"none\", e.g. a BertModel checkpoint); "
                             "use forward_features() for hidden states, or load one with an MLM "
                             "or classification head")
        h = self.forward_features(input_ids, attention_mask, token_type_ids)
        if head == "mlm":
            if labels is not None:  # the vocabulary projection only where a token is predicted
                selected = labels != -100
                logits = self.cls.predictions(h[selected])
                return logits, F.cross_entropy(logits, labels[selected])
            return self.cls.predictions(h)
        logits = self.classifier(self.classifier_dropout(self.pooled(h)))
        return logits if labels is None else (logits, F.cross_entropy(logits, labels))

    def save_hf(self, path, tokenizer=None) -> None:
        """Write a Hugging Face BertForMaskedLM / BertForSequenceClassification / BertModel directory."""
        from ..interop import save_hf

        save_hf(self, path, tokenizer)
