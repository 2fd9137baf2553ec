"""Masked-language-model inputs (Devlin et al., 2019, Section 3.1, Task #1).

Of the tokens that are neither special ([CLS], [SEP], [PAD], ...) nor padding, each is
selected with probability ``prob`` (15%); a selected token is replaced by [MASK] 80% of
the time, by a random (non-special) token 10% of the time and left unchanged 10% of the
time, and only selected positions are predicted (label = the original token, -100
elsewhere). With ``whole_word`` a word's pieces (a word-initial piece and the ``##``
pieces after it) are selected together, as in BERT's whole-word-masking models.

Everything is drawn from a ``torch.Generator`` the caller seeds, so a batch is a pure
function of its seed: a resumed run masks exactly as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

IGNORE = -100


@dataclass
class Masker:
    mask_token_id: int
    special_ids: list[int]       # never selected, never drawn as random replacements
    vocab_size: int
    word_starts: np.ndarray | None = None  # (vocab,) bool; needed for whole_word
    prob: float = 0.15
    whole_word: bool = False

    def __post_init__(self):
        if not 0.0 < self.prob < 1.0:
            raise ValueError(f"mask probability must be in (0, 1), got {self.prob}")
        if self.whole_word and self.word_starts is None:
            raise ValueError("whole-word masking needs the vocabulary's word starts (a WordPiece tokenizer)")
        special = torch.zeros(self.vocab_size, dtype=torch.bool)
        special[self.special_ids] = True
        self.special = special
        self.replacements = (~special).nonzero().squeeze(1)
        self.starts = None if self.word_starts is None else torch.from_numpy(self.word_starts)

    @classmethod
    def for_tokenizer(cls, tokenizer, prob: float = 0.15, whole_word: bool = False) -> "Masker":
        if tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer has no [MASK] token; masked-LM training needs one")
        return cls(tokenizer.mask_token_id, tokenizer.special_ids, tokenizer.vocab_size,
                   tokenizer.word_starts() if whole_word else None, prob, whole_word)

    def candidates(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        ok = ~self.special[ids]
        return ok if attention_mask is None else ok & attention_mask.bool()

    def __call__(self, ids: Tensor, generator: torch.Generator,
                 attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """ids (batch, time) -> (masked inputs, labels); ``ids`` is not modified."""
        can = self.candidates(ids, attention_mask)
        draw = torch.rand(ids.shape, generator=generator)
        if self.whole_word:  # every piece takes the draw of its word's first piece
            begins = self.starts[ids] | ~can
            pos = torch.arange(ids.size(1)).expand_as(ids)
            first = torch.where(begins, pos, torch.zeros_like(pos)).cummax(dim=1).values
            draw = draw.gather(1, first)
        selected = (draw < self.prob) & can
        if not selected.any() and can.any():  # a batch with nothing to predict has no loss
            selected.view(-1)[can.view(-1).nonzero()[0]] = True
        labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
        how = torch.rand(ids.shape, generator=generator)
        random_ids = self.replacements[torch.randint(len(self.replacements), ids.shape, generator=generator)]
        inputs = torch.where(selected & (how < 0.8), torch.full_like(ids, self.mask_token_id), ids)
        inputs = torch.where(selected & (how >= 0.8) & (how < 0.9), random_ids, inputs)
        return inputs, labels
