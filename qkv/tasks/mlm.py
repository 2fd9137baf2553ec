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

``data.masking`` picks the units masked together: ``"token"`` (BERT), ``"whole_word"``
(a word's pieces), or ERNIE's knowledge masking (Sun et al., 2019, ERNIE 1.0, Section
3.2): ``"phrase"`` and ``"entity"`` mask whole phrases / named entities (spans of corpora
that have them, the Brown corpus's from its tags; other text is masked by whole words),
and ``"ernie"`` trains in ERNIE's three stages, whole words then phrases then entities,
each a third of ``train.max_steps``. The unit flags travel with the tokens: an array as
long as the token stream, cached beside it. Validation and ``qkv evaluate`` mask at the
run's level (whole words for ``"ernie"``); with Brown among the corpora, ``evaluate`` also
runs the span probe: mask every piece of one entity (or phrase) of a held-out document
and count how often the model recovers all of them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import models
from ..config import from_dict
from ..data import brown, data_root, dataset_module, prepared
from ..data.errors import DataError
from ..data.lm import TokenWindows, encode_cached, mix64
from ..data.mlm import IGNORE, LEVEL_BITS, Masker, unit_flags_cached
from ..errors import ConfigError
from ..tokenizers import WordPieceTokenizer, find_tokenizer
from .base import Option, Task, check_text_model, device_of
from .span_probe import span_probe

MASKING = ("token", "whole_word", "phrase", "entity", "ernie")
ERNIE_STAGES = ("whole_word", "phrase", "entity")  # basic-level, phrase-level, entity-level masking


@dataclass
class MLMDataConfig:
    corpora: list[str] = field(default_factory=lambda: ["shakespeare", "brown"])
    vocab_size: int = 8192       # WordPiece vocabulary trained on the corpora's training text
    lowercase: bool = True
    seq_len: int = 128           # tokens per sequence, [CLS] and [SEP] included
    mask_prob: float = 0.15
    masking: str = "token"       # token | whole_word | phrase | entity | ernie (units masked together)
    whole_word: bool = False     # the older spelling of masking = "whole_word"
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
        if self.masking not in MASKING:
            raise ValueError(f"data.masking must be one of {', '.join(MASKING)}, got {self.masking!r}")
        if self.whole_word and self.masking not in ("token", "whole_word"):
            raise ValueError('data.whole_word = true (the older spelling of masking = "whole_word") '
                             f"contradicts data.masking = {self.masking!r}: remove it")
        if self.whole_word:
            self.masking = "whole_word"


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


def window_starts(flags: np.ndarray, levels: list[str]) -> torch.Tensor:
    """Unit flags of windows (batch, n) and each row's level -> where units begin in the
    wrapped windows (batch, n + 2); [CLS] and [SEP] are units of their own."""
    bits = np.array([LEVEL_BITS[level] for level in levels], dtype=np.uint8)[:, None]
    inner = torch.from_numpy((flags & bits) != 0)
    edge = torch.ones(len(inner), 1, dtype=torch.bool)
    return torch.cat([edge, inner, edge], dim=1)


def split_flags(folder: Path, split: str, tokenizer) -> np.ndarray:
    """The unit flags of a corpus's ``SPLIT.txt``: its own spans (``split_spans`` of its
    data set module, e.g. Brown's entities and phrases), or words only."""
    spans = getattr(dataset_module(folder.name), "split_spans", None)
    return unit_flags_cached(folder / f"{split}.txt", spans(folder, split) if spans else {}, tokenizer,
                             folder / "tokens")


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
    options = (Option("probe_spans", int, 2000, "Brown entities and phrases (each) the span probe masks, "
                      "evenly spread over the split's documents; 0: no probe"),)

    def __init__(self, run, model, tokenizer):
        super().__init__(run, model, tokenizer)
        if not isinstance(tokenizer, WordPieceTokenizer):
            raise ConfigError(f"the mlm task needs a WordPiece tokenizer, not {getattr(tokenizer, 'kind', None)!r}")
        self.folders = [prepared(name, self.data.dir or None) for name in self.data.corpora]
        self.masker = Masker.for_tokenizer(tokenizer, self.data.mask_prob,
                                           whole_word=self.data.masking in ("whole_word", "ernie"))
        self.eval_level = "whole_word" if self.data.masking == "ernie" else self.data.masking

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
        self.windows = TokenWindows(self.tokens(self.folders, "train"), self.data.seq_len - 2, seed=self.run.seed)
        self.flags = None if self.data.masking in ("token", "whole_word") else self.unit_flags(self.folders, "train")
        self.val_batches = self.split_batches(self.folders, "val", self.run.train.batch_size,
                                              self.run.train.eval_batches)
        self.tokens_per_sample = self.data.seq_len

    def tokens(self, folders, split: str) -> np.ndarray:
        return np.concatenate([encode_cached(f / f"{split}.txt", self.tokenizer, f / "tokens") for f in folders])

    def unit_flags(self, folders, split: str) -> np.ndarray:
        """Unit flags aligned with ``tokens(folders, split)``, token for token."""
        parts = [split_flags(f, split, self.tokenizer) for f in folders]
        for f, flags in zip(folders, parts):
            if len(flags) != len(encode_cached(f / f"{split}.txt", self.tokenizer, f / "tokens")):
                raise DataError(f"the cached unit flags of {f / split}.txt do not match its tokens; "
                                f"delete {f / 'tokens' / self.tokenizer.fingerprint} to encode it again")
        return np.concatenate(parts)

    def level_of(self, index: int) -> str:
        """The masking level of training sample ``index``. For ``"ernie"``, ERNIE's stages
        (basic, phrase, entity), each a third of train.max_steps: the sample's step is its
        index over the samples per step (train.batch_size x train.grad_accum)."""
        if self.data.masking != "ernie":
            return self.data.masking
        train = self.run.train
        step = index // (train.batch_size * train.grad_accum)
        return ERNIE_STAGES[min(3 * step // train.max_steps, 2)]

    def batches(self, first: int, count: int):
        ids = wrap(self.windows.batch(first, count)[0], self.tokenizer)
        if self.flags is None:
            return self.masker(ids, generator(self.run.seed, first))
        flags = self.flags[self.windows.starts(first, count)[:, None] + np.arange(self.windows.seq_len)]
        levels = [self.level_of(i) for i in range(first, first + count)]
        return self.masker(ids, generator(self.run.seed, first), starts=window_starts(flags, levels))

    def split_batches(self, folders, split: str, batch_size: int, limit: int | None = None):
        """Fixed masked batches of non-overlapping windows of one split (the same every time)."""
        n = self.data.seq_len - 2
        folders = [f for f in folders if (f / f"{split}.txt").is_file()]
        if not folders:
            raise ConfigError(f"none of the corpora {self.data.corpora} has a {split!r} split")
        tokens = self.tokens(folders, split)
        windows = torch.from_numpy(tokens[: len(tokens) // n * n].astype(np.int64)).view(-1, n)
        flags = None
        if self.eval_level not in ("token", "whole_word"):
            flags = self.unit_flags(folders, split)[: len(windows) * n].reshape(-1, n)
        out = []
        for b, start in enumerate(range(0, len(windows), batch_size)):
            if limit is not None and b >= limit:
                break
            ids = wrap(windows[start:start + batch_size], self.tokenizer)
            starts = None if flags is None else window_starts(flags[start:start + batch_size],
                                                              [self.eval_level] * len(ids))
            out.append(self.masker(ids, generator(0, b), starts=starts))
        return out

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        return model(x, labels=y)[1]

    def validate(self, model) -> dict[str, float]:
        m = masked_metrics(model, self.val_batches)
        return {"val_loss": m["loss"], "val_ppl": m["perplexity"], "val_mlm_acc": m["masked_accuracy"]}

    def evaluate(self, model, split: str, out: Path, probe_spans: int = 2000) -> dict[str, float]:
        """Masked-token loss, perplexity and accuracy over every window of a split (15% of
        the tokens masked with a fixed seed), per corpus and over all of them; with Brown
        among the corpora, the span probe's accuracies (``brown_span_probe``)."""
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
        if "brown" in self.data.corpora and probe_spans > 0:
            results.update(self.brown_span_probe(model, split, probe_spans))
        return results

    def brown_span_probe(self, model, split: str, limit: int) -> dict[str, float]:
        """``span_probe`` on the Brown documents of a split, for entities and for phrases;
        nothing (and a warning) when Brown was prepared without spans."""
        folder = self.folders[self.data.corpora.index("brown")]
        try:
            spans = brown.document_spans(folder)
        except DataError as e:
            warnings.warn(f"{e}; skipping the span probe")
            return {}
        docs = brown.documents(folder, split)
        results = {}
        for level in brown.LEVELS:
            m = span_probe(model, self.tokenizer, [(d["text"], spans[d["id"]][level]) for d in docs],
                           self.data.seq_len, limit)
            results.update({f"{level}_{key}": value for key, value in m.items()})
        return results
