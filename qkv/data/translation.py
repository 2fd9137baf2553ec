"""Parallel corpora for translation: aligned ``{split}.{lang}`` files, a joint BPE
vocabulary, and batches built by token count with length bucketing.

Batching follows fairseq: the training pairs are sorted by length once and cut into
fixed batches of at most ``max_tokens`` padded tokens (source or target, whichever is
longer), so sentences of similar length share a batch and little is padding. Each epoch
visits every batch once, in an order drawn from ``(seed, epoch)``: batch ``j`` of the
stream is a pure function of ``j``, so a resumed run sees exactly the same data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..tokenizers import BPETokenizer, special_ids, train_joint_bpe
from .errors import DataError


def read_pairs(folder: Path, split: str, src: str, tgt: str) -> tuple[list[str], list[str]]:
    """The aligned lines of ``{split}.{src}`` and ``{split}.{tgt}`` (empty lines kept)."""
    files = [folder / f"{split}.{lang}" for lang in (src, tgt)]
    for f in files:
        if not f.is_file():
            raise DataError(f"{f} does not exist: is {split!r} a split of this data set, and were the "
                            f"versions {src}/{tgt} prepared (qkv data get NAME --src {src} --tgt {tgt})?")
    source, target = (f.read_text(encoding="utf-8").split("\n")[:-1] for f in files)
    if len(source) != len(target):
        raise DataError(f"{files[0]} has {len(source)} lines but {files[1]} has {len(target)}; they must align")
    return source, target


def joint_tokenizer(folder: Path, src: str, tgt: str, vocab_size: int, log=print) -> BPETokenizer:
    """A joint BPE trained on the training split of both sides, cached in the data folder."""
    cached = folder / "tokenizers" / f"joint-bpe-{src}-{tgt}-{vocab_size}"
    if (cached / BPETokenizer.filename).is_file():
        return BPETokenizer.load(cached / BPETokenizer.filename)
    log(f"training a joint byte-level BPE ({vocab_size} tokens) on train.{src} + train.{tgt} ...")
    source, target = read_pairs(folder, "train", src, tgt)
    tokenizer = train_joint_bpe(source + target, vocab_size)
    cached.mkdir(parents=True, exist_ok=True)
    tokenizer.save(cached)
    return tokenizer


def encode_pairs(tokenizer, source: list[str], target: list[str], max_len: int, log=print):
    """Token ids of each usable pair; pairs with an empty side, or longer than ``max_len``
    tokens with EOS, are left out and counted (never truncated)."""
    enc = tokenizer.tokenizer.encode_batch
    src_ids = [e.ids for e in enc(source, add_special_tokens=False)]
    tgt_ids = [e.ids for e in enc(target, add_special_tokens=False)]
    keep = [i for i in range(len(source)) if source[i].strip() and target[i].strip()
            and len(src_ids[i]) < max_len and len(tgt_ids[i]) < max_len]
    empty = sum(1 for s, t in zip(source, target) if not (s.strip() and t.strip()))
    if len(keep) < len(source):
        log(f"left out {len(source) - len(keep)} of {len(source)} pairs ({empty} with an empty side, "
            f"{len(source) - len(keep) - empty} longer than {max_len - 1} tokens)")
    return [src_ids[i] for i in keep], [tgt_ids[i] for i in keep]


class TokenBatches:
    """Fixed length-bucketed batches of (source, target) pairs, visited in a seeded order."""

    def __init__(self, src_ids: list[list[int]], tgt_ids: list[list[int]], max_tokens: int,
                 tokenizer, seed: int):
        if not src_ids:
            raise DataError("no sentence pairs to batch")
        self.src, self.tgt, self.seed = src_ids, tgt_ids, seed
        self.ids = special_ids(tokenizer)
        order = sorted(range(len(src_ids)), key=lambda i: (len(tgt_ids[i]), len(src_ids[i]), i))
        self.batches, current, longest = [], [], 0
        for i in order:
            n = max(len(src_ids[i]), len(tgt_ids[i])) + 1  # + EOS / BOS
            if current and max(longest, n) * (len(current) + 1) > max_tokens:
                self.batches.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, n)
        self.batches.append(current)
        self.target_tokens = sum(len(t) + 1 for t in tgt_ids)

    def __len__(self) -> int:
        return len(self.batches)

    def index(self, j: int) -> int:
        """Which fixed batch is number ``j`` of the training stream."""
        epoch, k = divmod(j, len(self.batches))
        return int(np.random.default_rng([self.seed, epoch]).permutation(len(self.batches))[k])

    def collate(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """input_ids (source + EOS, right-padded), attention_mask, decoder_input_ids (BOS +
        target) and labels (target + EOS; -100 on padding)."""
        pad, bos, eos = self.ids["pad_token_id"], self.ids["bos_token_id"], self.ids["eos_token_id"]
        S = max(len(self.src[i]) for i in rows) + 1
        T = max(len(self.tgt[i]) for i in rows) + 1
        out = {"input_ids": torch.full((len(rows), S), pad), "attention_mask": torch.zeros(len(rows), S, dtype=torch.long),
               "decoder_input_ids": torch.full((len(rows), T), pad), "labels": torch.full((len(rows), T), -100)}
        for r, i in enumerate(rows):
            s, t = self.src[i] + [eos], self.tgt[i]
            out["input_ids"][r, :len(s)] = torch.tensor(s)
            out["attention_mask"][r, :len(s)] = 1
            out["decoder_input_ids"][r, :len(t) + 1] = torch.tensor([bos] + t)
            out["labels"][r, :len(t) + 1] = torch.tensor(t + [eos])
        return out

    def batch(self, j: int) -> dict[str, torch.Tensor]:
        return self.collate(self.batches[self.index(j)])
