"""Language-modelling data: a text encoded once into a flat token array, cached on disk
as a memmap, and cut into random windows of ``seq_len + 1`` tokens.

Window ``j`` of a given seed is a pure function of ``(seed, j)``: a run that resumes at
sample ``j`` sees exactly the windows it would have seen, whatever happened before, and
any number of processes can each take their own share of a global batch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write
from ..tokenizers import BPETokenizer, CharTokenizer
from .errors import DataError


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def encode_cached(text_file: Path, tokenizer, cache_root: Path) -> np.memmap:
    """Tokens of ``text_file`` under ``tokenizer``, encoded on first use and cached as
    ``cache_root/<tokenizer fingerprint>/<name>.bin``."""
    dtype = token_dtype(tokenizer.vocab_size)
    out = cache_root / tokenizer.fingerprint / f"{text_file.stem}.{np.dtype(dtype).name}.bin"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        ids = np.asarray(tokenizer.encode(text_file.read_text(encoding="utf-8")), dtype=dtype)
        atomic_write(out, lambda tmp: ids.tofile(tmp))
    return np.memmap(out, dtype=dtype, mode="r")


def corpus_tokenizer(corpus: Path, kind: str, vocab_size: int = 0):
    """The tokenizer for a prepared text corpus (``train.txt`` / ``val.txt``).

    char: the characters of the whole corpus (a vocabulary, not a learned model; taking it
    from every work keeps held-out text encodable). bpe: byte-level BPE with ``vocab_size``
    tokens trained on the training split only, cached in ``corpus/tokenizers/``.
    """
    train_text = (corpus / "train.txt").read_text(encoding="utf-8")
    if kind == "char":
        return CharTokenizer.train([train_text, (corpus / "val.txt").read_text(encoding="utf-8")])
    cached = corpus / "tokenizers" / f"bpe-{vocab_size}"
    if (cached / BPETokenizer.filename).is_file():
        return BPETokenizer.load(cached / BPETokenizer.filename)
    print(f"training a byte-level BPE tokenizer ({vocab_size} tokens) on {corpus / 'train.txt'} ...")
    tokenizer = BPETokenizer.train(train_text.splitlines(keepends=True), vocab_size)
    cached.mkdir(parents=True, exist_ok=True)
    tokenizer.save(cached)
    return tokenizer


def encode_corpus(corpus: Path, tokenizer) -> dict[str, np.memmap]:
    """Both splits of a prepared corpus, encoded (once) and cached under ``corpus/tokens``."""
    return {split: encode_cached(corpus / f"{split}.txt", tokenizer, corpus / "tokens")
            for split in ("train", "val")}


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective hash of 64-bit integers (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class TokenWindows:
    """(input, target) pairs: ``seq_len`` tokens and the same tokens shifted by one."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int):
        if len(tokens) <= seq_len:
            raise DataError(
                f"the text has {len(tokens)} tokens, too few for windows of {seq_len}"
            )
        self.tokens, self.seq_len = tokens, seq_len
        self.n_starts = len(tokens) - seq_len
        self.key = mix64(np.array([seed], dtype=np.uint64))[0]

    def starts(self, first: int, count: int) -> np.ndarray:
        j = np.arange(first, first + count, dtype=np.uint64)
        with np.errstate(over="ignore"):
            return (mix64(j ^ self.key) % np.uint64(self.n_starts)).astype(np.int64)

    def batch(self, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows ``first .. first + count - 1`` as (x, y), each (count, seq_len) int64."""
        idx = self.starts(first, count)[:, None] + np.arange(self.seq_len + 1)
        chunk = torch.from_numpy(self.tokens[idx].astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:]
