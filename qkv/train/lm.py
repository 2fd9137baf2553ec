"""The language-modelling task: next-token prediction on a text corpus.

``[data]`` names the corpus, the tokenizer and the training window; ``[model]`` is a
causal language model's config (``type = "gpt"``; ``vocab_size`` defaults to the
tokenizer's). The tokenizer is built once per run and saved in the run directory: a
character vocabulary from the corpus, or a byte-level BPE trained on the training split
only (cached in the data folder per vocabulary size).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ConfigError, from_dict
from ..data import prepared
from ..data.lm import TokenWindows, corpus_tokenizer, encode_corpus
from ..io import build_model, load
from ..tokenizers import TOKENIZERS, find_tokenizer
from .config import RunConfig

CAUSAL_LMS = ("gpt",)


@dataclass
class LMDataConfig:
    name: str = "shakespeare"   # a data set prepared by `qkv data get`
    tokenizer: str = "char"     # char | bpe
    vocab_size: int = 0         # BPE vocabulary size (bpe only)
    block_size: int = 256       # tokens per training window; at most the model's block_size
    dir: str = ""               # data root; "" = $QKV_DATA or ~/.cache/qkv

    def __post_init__(self):
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"data.tokenizer must be one of {sorted(TOKENIZERS)}, got {self.tokenizer!r}")
        if self.tokenizer == "bpe" and self.vocab_size <= 256:
            raise ValueError("data.vocab_size must exceed 256 (the byte alphabet) for a BPE tokenizer")
        if self.block_size < 1:
            raise ValueError(f"data.block_size must be positive, got {self.block_size}")


class LanguageModelTask:
    def __init__(self, run: RunConfig, run_dir: Path):
        self.data = data = from_dict(LMDataConfig, run.data, where="data")
        corpus = prepared(data.name, data.dir or None)
        self.tokenizer = find_tokenizer(run_dir) or corpus_tokenizer(corpus, data.tokenizer, data.vocab_size)
        if self.tokenizer.kind != data.tokenizer:
            raise ConfigError(f"{run_dir} holds a {self.tokenizer.kind} tokenizer but data.tokenizer "
                              f"is {data.tokenizer!r}; use a new out_dir")
        model_cfg = dict(run.model)
        model_type = model_cfg.pop("type", "gpt")
        if model_type not in CAUSAL_LMS:
            raise ConfigError(f"the lm task trains a causal language model ({CAUSAL_LMS}), not {model_type!r}")
        model_cfg.setdefault("vocab_size", self.tokenizer.vocab_size)
        if model_cfg["vocab_size"] < self.tokenizer.vocab_size:
            raise ConfigError(f"model.vocab_size={model_cfg['vocab_size']} is smaller than the tokenizer's "
                              f"{self.tokenizer.vocab_size}; remove it to use the tokenizer's size")
        self.model = build_model({"model_type": model_type, **model_cfg})
        if data.block_size > self.model.config.block_size:
            raise ConfigError(f"data.block_size={data.block_size} exceeds the model's context "
                              f"(model.block_size={self.model.config.block_size}); lower data.block_size "
                              "or raise model.block_size")
        tokens = encode_corpus(corpus, self.tokenizer)
        self.windows = TokenWindows(tokens["train"], data.block_size, seed=run.seed)
        val = TokenWindows(tokens["val"], data.block_size, seed=0)  # the same windows every pass
        bs = run.train.batch_size
        self.val_batches = [val.batch(i * bs, bs) for i in range(run.train.eval_batches)]
        self.tokens_per_sample = data.block_size

    def batches(self, first: int, count: int):
        return self.windows.batch(first, count)

    @staticmethod
    def loss(model, batch) -> torch.Tensor:
        x, y = batch
        return model(x, y)[1]

    def evaluate(self, model) -> dict[str, float]:
        device = next(model.parameters()).device
        losses = [F.cross_entropy(model(x.to(device)).flatten(0, 1).float(), y.to(device).flatten())
                  for x, y in self.val_batches]
        return {"val_loss": torch.stack(losses).mean().item()}

    @staticmethod
    def evaluate_run(run_dir: Path, run: RunConfig, split: str, out: Path) -> dict[str, float]:
        """Mean next-token loss over every token of a split (non-overlapping windows)."""
        model, tokenizer = load(run_dir)
        data = from_dict(LMDataConfig, run.data, where="data")
        tokens = encode_corpus(prepared(data.name, data.dir or None), tokenizer)
        if split not in tokens:
            raise ConfigError(f"data set {data.name!r} has no {split!r} split; it has {sorted(tokens)}")
        ids = torch.from_numpy(tokens[split].astype("int64"))
        n, total, count = data.block_size, 0.0, 0
        with torch.no_grad():
            for start in range(0, len(ids) - 1, n):
                x, y = ids[start:start + n], ids[start + 1:start + n + 1]
                x = x[:len(y)]
                total += F.cross_entropy(model(x[None])[0], y, reduction="sum").item()
                count += len(y)
        loss = total / count
        return {"loss": loss, "perplexity": float(torch.tensor(loss).exp()), "tokens": count}
