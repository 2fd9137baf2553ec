"""Masked-language-model inputs (Devlin et al., 2019, Section 3.1, Task #1).

Of the tokens that are neither special ([CLS], [SEP], [PAD], ...) nor padding, each is
selected with probability ``prob`` (15%); a selected token is replaced by [MASK] 80% of
the time, by a random (non-special) token 10% of the time and left unchanged 10% of the
time, and only selected positions are predicted (label = the original token, -100
elsewhere). With ``whole_word`` a word's pieces (a word-initial piece and the ``##``
pieces after it) are selected together, as in BERT's whole-word-masking models.

Knowledge masking (Sun et al., 2019, ERNIE 1.0, Section 3.2) selects larger units: the
caller passes ``starts``, where each unit begins. Each unit is selected with probability
``prob``, so 15% of the tokens are selected in expectation whatever the units' lengths,
and a selected unit is masked, replaced or kept as a whole (80/10/10). The units of a
text come from ``unit_flags``: with spans of phrases or named entities (e.g. the Brown
corpus's, from its tags), a span is one unit and each word outside spans is one.

Everything is drawn from a ``torch.Generator`` the caller seeds, so a batch is a pure
function of its seed: a resumed run masks exactly as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..files import atomic_write

IGNORE = -100
WORD, PHRASE, ENTITY = 1, 2, 4  # bits of a token's unit flags: it begins a unit of that level
LEVEL_BITS = {"whole_word": WORD, "phrase": PHRASE, "entity": ENTITY}


def span_of_tokens(offsets, spans) -> np.ndarray:
    """The index of the span holding each token (-1: none), for tokens at character
    ``offsets`` [(start, end), ...] and sorted, non-overlapping spans [(start, end), ...]."""
    starts = np.array([a for a, _ in offsets], dtype=np.int64)
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    if not len(spans):
        return np.full(len(starts), -1)
    k = np.searchsorted(spans[:, 0], starts, side="right") - 1
    return np.where((k >= 0) & (starts < spans[np.maximum(k, 0), 1]), k, -1)


def unit_starts(words: np.ndarray, span_of: np.ndarray) -> np.ndarray:
    """Where units begin: at a span's first token and, outside spans, at each word's first
    piece (``words``: bool per token)."""
    before = np.concatenate([[-2], span_of[:-1]])
    return (span_of != before) | ((span_of < 0) & words)


def unit_flags(text: str, spans: dict[str, list], tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """A text's WordPiece ids and, per token, its unit flags: bit WORD where a word begins,
    PHRASE / ENTITY where a unit of that level begins (``spans["phrase"]``,
    ``spans["entity"]``: character spans in ``text``; none: words only)."""
    encoding = tokenizer.tokenizer.encode(text, add_special_tokens=False)
    words = tokenizer.word_starts()[encoding.ids]
    flags = words * WORD
    for level in ("phrase", "entity"):
        flags |= unit_starts(words, span_of_tokens(encoding.offsets, spans.get(level, []))) * LEVEL_BITS[level]
    return np.asarray(encoding.ids, dtype=np.int64), flags.astype(np.uint8)


def unit_ids(flags: np.ndarray, level: str) -> np.ndarray:
    """Each token's unit at a level ("whole_word", "phrase", "entity"): 0, 1, 2, ...; the
    pieces of one unit share it."""
    return np.cumsum((flags & LEVEL_BITS[level]) != 0) - 1


def unit_flags_cached(text_file, spans: dict[str, list], tokenizer, cache_root) -> np.memmap:
    """``unit_flags`` of a text file, computed on first use and cached beside its tokens
    (``encode_cached``) as ``cache_root/<tokenizer fingerprint>/<name>.units-<spans' hash>.uint8.bin``."""
    key = hashlib.sha256(json.dumps(spans, sort_keys=True).encode()).hexdigest()[:12]
    out = cache_root / tokenizer.fingerprint / f"{text_file.stem}.units-{key}.uint8.bin"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        flags = unit_flags(text_file.read_text(encoding="utf-8"), spans, tokenizer)[1]
        atomic_write(out, lambda tmp: flags.tofile(tmp))
    return np.memmap(out, dtype=np.uint8, mode="r")


def first_of_unit(begins: Tensor) -> Tensor:
    """(batch, time) bool -> the position of each token's unit's first token."""
    pos = torch.arange(begins.size(1)).expand_as(begins)
    return torch.where(begins, pos, torch.zeros_like(pos)).cummax(dim=1).values


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

    def __call__(self, ids: Tensor, generator: torch.Generator, attention_mask: Tensor | None = None,
                 starts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """ids (batch, time) -> (masked inputs, labels); ``ids`` is not modified. ``starts``
        (batch, time) bool marks where units begin: each unit is selected, and masked,
        replaced or kept, as one."""
        can = self.candidates(ids, attention_mask)
        draw = torch.rand(ids.shape, generator=generator)
        if starts is not None:
            first = first_of_unit(starts | ~can)
            draw = draw.gather(1, first)
        elif self.whole_word:  # every piece takes the draw of its word's first piece
            draw = draw.gather(1, first_of_unit(self.starts[ids] | ~can))
        selected = (draw < self.prob) & can
        if not selected.any() and can.any():  # a batch with nothing to predict has no loss
            selected.view(-1)[can.view(-1).nonzero()[0]] = True
        labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
        how = torch.rand(ids.shape, generator=generator)
        if starts is not None:  # the whole unit is masked, replaced or kept
            how = how.gather(1, first)
        random_ids = self.replacements[torch.randint(len(self.replacements), ids.shape, generator=generator)]
        inputs = torch.where(selected & (how < 0.8), torch.full_like(ids, self.mask_token_id), ids)
        inputs = torch.where(selected & (how >= 0.8) & (how < 0.9), random_ids, inputs)
        return inputs, labels
