"""Masked-language-model pretraining on real text (Devlin et al., 2019; ``task = "mlm"``).

``[data]`` lists the corpora (prepared text corpora: ``shakespeare``, ``brown``, ...),
the WordPiece vocabulary size and the sequence length; ``[model]`` is a text encoder of
the registry (``type = "bert"`` or a preset such as ``preset = "bert-base"``) with an MLM
head. A WordPiece tokenizer is trained on the corpora's training splits (cached in the
data root) and saved in the run directory. A sample is a random window of ``seq_len - 2``
tokens of the concatenated training text, wrapped as ``[CLS] ... [SEP]`` and masked by
``qkv.data.mlm.Masker``; window and mask are pure functions of the sample index.
Validation reports the loss on the predicted positions, its perplexity, and masked-token
accuracy (how often the top prediction is the original).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import models
from ..config import from_dict
from ..data import data_root, prepared
from ..data.lm import TokenWindows, encode_cached, mix64
from ..data.mlm import IGNORE, Masker
from ..errors import ConfigError
from ..tokenizers import WordPieceTokenizer, find_tokenizer
from .base import Task, check_text_model, device_of


@dataclass
class MLMDataConfig:
    corpora: list[str] = field(default_factory=lambda: ["shakespeare", "brown"])
    vocab_size: int = 8192       # WordPiece vocabulary trained on the corpora's training text
    lowercase: bool = True
    seq_len: int = 128           # tokens per sequence, [CLS] and [SEP] included
    mask_prob: float = 0.15
    whole_word: bool = False     # mask all pieces of a word together
    dir: str = ""                # data root; "" = $QKV_DATA or ~/.cache/qkv

    def __post_init__(self):
        if not self.corpora:
            raise ValueError("data.corpora must be a non-empty list of data set names")
        if self.seq_len < 3:
            raise ValueError(f"data.seq_len must be at least 3 ([CLS], a token, [SEP]), got {self.seq_len}")
        if self.vocab_size < 100:
            raise ValueError(f"data.vocab_size must be at least 100, got {self.vocab_size}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"data.mask_prob must be in (0, 1), got {self.mask_prob}")


def corpora_tokenizer(data: MLMDataConfig, folders: list[Path]) -> WordPieceTokenizer:
    """WordPiece trained on the corpora's train.txt, cached under the data root."""
    name = f"wordpiece-{data.vocab_size}-{'cased' if not data.lowercase else 'uncased'}-{'+'.join(data.corpora)}"
    cached = data_root(data.dir or None) / "tokenizers" / name
    if (cached / WordPieceTokenizer.filename).is_file():
        return WordPieceTokenizer.load(cached / WordPieceTokenizer.filename)
    print(f"training a WordPiece tokenizer ({data.vocab_size} pieces) on {', '.join(data.corpora)} ...")
    lines = [line for f in folders for line in (f / "train.txt").read_text(encoding="utf-8").splitlines()]
    tokenizer = WordPieceTokenizer.train(lines, data.vocab_size, lowercase=data.lowercase)
    cached.mkdir(parents=True, exist_ok=True)
    tokenizer.save(cached)
    return tokenizer


def wrap(windows: torch.Tensor, tokenizer) -> torch.Tensor:
    """(batch, n) -> (batch, n + 2): [CLS] window [SEP]."""
    cls = torch.full((len(windows), 1), tokenizer.cls_token_id, dtype=torch.long)
    sep = torch.full((len(windows), 1), tokenizer.sep_token_id, dtype=torch.long)
    return torch.cat([cls, windows, sep], dim=1)


def generator(seed: int, index: int) -> torch.Generator:
    key = mix64(np.array([seed * 1_000_003 + index], dtype=np.uint64))[0]
    return torch.Generator().manual_seed(int(key) & 0x7FFF_FFFF_FFFF_FFFF)


@torch.no_grad()
def masked_metrics(model, batches) -> dict[str, float]:
    """Loss, perplexity and accuracy over the predicted positions of (inputs, labels) batches."""
    device = device_of(model)
    total, correct, count = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits, loss = model(x, labels=y)
        n = int((y != IGNORE).sum())
        total += loss.item() * n
        correct += int((logits.argmax(-1) == y[y != IGNORE]).sum())
        count += n
    loss = total / count
    return {"loss": loss, "perplexity": float(np.exp(loss)), "masked_accuracy": correct / count,
            "predicted_tokens": count}


class MaskedLanguageModelTask(Task):
    name = "mlm"
    data_config = MLMDataConfig

    def __init__(self, run, model, tokenizer):
        super().__init__(run, model, tokenizer)
        if not isinstance(tokenizer, WordPieceTokenizer):
            raise ConfigError(f"the mlm task needs a WordPiece tokenizer, not {getattr(tokenizer, 'kind', None)!r}")
        self.folders = [prepared(name, self.data.dir or None) for name in self.data.corpora]
        self.masker = Masker.for_tokenizer(tokenizer, self.data.mask_prob, self.data.whole_word)

    @classmethod
    def build(cls, run, run_dir: Path):
        data = from_dict(MLMDataConfig, run.data, where="data")
        folders = [prepared(name, data.dir or None) for name in data.corpora]
        tokenizer = find_tokenizer(run_dir) or corpora_tokenizer(data, folders)
        if not isinstance(tokenizer, WordPieceTokenizer):
            raise ConfigError(f"{run_dir} holds a {tokenizer.kind} tokenizer; the mlm task needs "
                              "WordPiece. Use a new out_dir")
        model = models.from_section(run.model, "text_encoder", default="bert",
                                    data={"vocab_size": tokenizer.vocab_size, "add_pooler": False},
                                    fixed={"head": "mlm"})
        check_text_model(model, tokenizer, data.seq_len, "max_position_embeddings")
        return model, tokenizer

    def prepare_training(self) -> None:
        train = np.concatenate([encode_cached(f / "train.txt", self.tokenizer, f / "tokens") for f in self.folders])
        self.windows = TokenWindows(train, self.data.seq_len - 2, seed=self.run.seed)
        self.val_batches = self.split_batches(self.folders, "val", self.run.train.batch_size,
                                              self.run.train.eval_batches)
        self.tokens_per_sample = self.data.seq_len

    def batches(self, first: int, count: int):
        ids = wrap(self.windows.batch(first, count)[0], self.tokenizer)
        return self.masker(ids, generator(self.run.seed, first))

    def split_batches(self, folders, split: str, batch_size: int, limit: int | None = None):
        """Fixed masked batches of non-overlapping windows of one split (the same every time)."""
        n = self.data.seq_len - 2
        parts = [encode_cached(f / f"{split}.txt", self.tokenizer, f / "tokens")
                 for f in folders if (f / f"{split}.txt").is_file()]
        if not parts:
            raise ConfigError(f"none of the corpora {self.data.corpora} has a {split!r} split")
        tokens = np.concatenate(parts)
        windows = torch.from_numpy(tokens[: len(tokens) // n * n].astype(np.int64)).view(-1, n)
        out = []
        for b, start in enumerate(range(0, len(windows), batch_size)):
            if limit is not None and b >= limit:
                break
            out.append(self.masker(wrap(windows[start:start + batch_size], self.tokenizer), generator(0, b)))
        return out

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        return model(x, labels=y)[1]

    def validate(self, model) -> dict[str, float]:
        m = masked_metrics(model, self.val_batches)
        return {"val_loss": m["loss"], "val_ppl": m["perplexity"], "val_mlm_acc": m["masked_accuracy"]}

    def evaluate(self, model, split: str, out: Path) -> dict[str, float]:
        """Masked-token loss, perplexity and accuracy over every window of a split (15% of
        the tokens masked with a fixed seed), per corpus and over all of them."""
        per_corpus = {name: masked_metrics(model, self.split_batches([folder], split, 32))
                      for name, folder in zip(self.data.corpora, self.folders)
                      if (folder / f"{split}.txt").is_file()}
        if not per_corpus:
            raise ConfigError(f"none of the corpora {self.data.corpora} has a {split!r} split")
        n = sum(m["predicted_tokens"] for m in per_corpus.values())
        loss = sum(m["loss"] * m["predicted_tokens"] for m in per_corpus.values()) / n
        accuracy = sum(m["masked_accuracy"] * m["predicted_tokens"] for m in per_corpus.values()) / n
        results = {"loss": loss, "perplexity": float(np.exp(loss)), "masked_accuracy": accuracy, "predicted_tokens": n}
        for name, m in per_corpus.items():
            results.update({f"{name}/masked_accuracy": m["masked_accuracy"], f"{name}/perplexity": m["perplexity"]})
        return results
