"""Language modelling: next-token prediction on a text corpus (``task = "lm"``).

``[data]`` names the corpus, the tokenizer and the training sequence length; ``[model]``
is any causal language model of the registry (``type = "gpt"`` or a preset such as
``preset = "gpt2"``; ``vocab_size`` defaults to the tokenizer's). The tokenizer is built
once per run and saved in the run directory: a character vocabulary from the corpus, or a
byte-level BPE trained on the training split only (cached in the data folder per size).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import models
from ..config import from_dict
from ..data import prepared
from ..data.lm import TokenWindows, corpus_tokenizer, encode_corpus
from ..errors import ConfigError
from ..tokenizers import find_tokenizer
from .base import Task, check_text_model, device_of

TOKENIZER_KINDS = ("char", "bpe")


@dataclass
class LMDataConfig:
    name: str = "shakespeare"   # a data set prepared by `qkv data get`
    tokenizer: str = "char"     # char | bpe
    vocab_size: int = 0         # BPE vocabulary size (bpe only)
    seq_len: int = 256          # tokens per training sequence; at most the model's block_size
    dir: str = ""               # data root; "" = $QKV_DATA or ~/.cache/qkv

    def __post_init__(self):
        if self.tokenizer not in TOKENIZER_KINDS:
            raise ValueError(f"data.tokenizer must be one of {TOKENIZER_KINDS}, got {self.tokenizer!r}")
        if self.tokenizer == "bpe" and self.vocab_size <= 256:
            raise ValueError("data.vocab_size must exceed 256 (the byte alphabet) for a BPE tokenizer")
        if self.seq_len < 1:
            raise ValueError(f"data.seq_len must be positive, got {self.seq_len}")


class LanguageModelTask(Task):
    name = "lm"
    data_config = LMDataConfig

    @classmethod
    def build(cls, run, run_dir: Path):
        data = from_dict(LMDataConfig, run.data, where="data")
        corpus = prepared(data.name, data.dir or None)
        tokenizer = find_tokenizer(run_dir) or corpus_tokenizer(corpus, data.tokenizer, data.vocab_size)
        if tokenizer.kind != data.tokenizer:
            raise ConfigError(f"{run_dir} holds a {tokenizer.kind} tokenizer but data.tokenizer is "
                              f"{data.tokenizer!r}; use a new out_dir")
        model = models.from_section(run.model, "causal_lm", default="gpt",
                                    data={"vocab_size": tokenizer.vocab_size})
        check_text_model(model, tokenizer, data.seq_len, "block_size")
        return model, tokenizer

    def tokens(self) -> dict:
        return encode_corpus(prepared(self.data.name, self.data.dir or None), self.tokenizer)

    def prepare_training(self) -> None:
        tokens, n, bs = self.tokens(), self.data.seq_len, self.run.train.batch_size
        self.windows = TokenWindows(tokens["train"], n, seed=self.run.seed)
        val = TokenWindows(tokens["val"], n, seed=0)  # the same windows every pass
        self.val_batches = [val.batch(i * bs, bs) for i in range(self.run.train.eval_batches)]
        self.tokens_per_sample = n

    def batches(self, first: int, count: int):
        return self.windows.batch(first, count)

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        return model(x, labels=y)[1]

    def validate(self, model) -> dict[str, float]:
        device = device_of(model)
        losses = [F.cross_entropy(model(x.to(device)).flatten(0, 1).float(), y.to(device).flatten())
                  for x, y in self.val_batches]
        return {"val_loss": torch.stack(losses).mean().item()}

    def inputs(self, split: str, count: int) -> torch.Tensor:
        tokens = self.tokens()
        if split not in tokens:
            raise ConfigError(f"data set {self.data.name!r} has no {split!r} split; it has {sorted(tokens)}")
        n = self.data.seq_len
        usable = min(count, len(tokens[split]) // n)
        return torch.from_numpy(tokens[split][:usable * n].astype("int64")).view(usable, n)

    @torch.no_grad()
    def evaluate(self, model, split: str, out: Path) -> dict[str, float]:
        """Mean next-token loss over every token of a split (non-overlapping windows)."""
        tokens = self.tokens()
        if split not in tokens:
            raise ConfigError(f"data set {self.data.name!r} has no {split!r} split; it has {sorted(tokens)}")
        ids = torch.from_numpy(tokens[split].astype("int64"))
        n, total, count = self.data.seq_len, 0.0, 0
        device = device_of(model)
        for start in range(0, len(ids) - 1, n):
            x, y = ids[start:start + n], ids[start + 1:start + n + 1]
            x = x[:len(y)]
            total += F.cross_entropy(model(x[None].to(device))[0], y.to(device), reduction="sum").item()
            count += len(y)
        loss = total / count
        return {"loss": loss, "perplexity": float(torch.tensor(loss).exp()), "tokens": count}
