"""Sequence classification: fine-tune a pretrained BERT to label passages of text
(Devlin et al., 2019, Section 4.1: the pooled [CLS] state -> a linear layer -> softmax).

The data set is the Brown corpus: each document's words are cut into consecutive passages
of ``passage_words`` words, labelled with the document's genre (15 classes); the
train/val/test split is the corpus's split by document, so no document is in two splits.
``[model] init`` names the encoder to start from: a Hugging Face BERT folder (e.g. the
all-MiniLM-L6-v2 weights from ``qkv data get all-minilm-l6-v2``), or a qkv run (e.g. an
``mlm`` pretraining run); the pooler (if the source has none) and the classifier start
from random. Its tokenizer comes along and is saved in the run directory.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import models
from ..config import from_dict
from ..data import brown, data_root, prepared
from ..data.lm import mix64
from ..errors import ConfigError
from ..files import atomic_write_text
from .base import Task, device_of


@dataclass
class ClassifyDataConfig:
    name: str = "brown"
    passage_words: int = 64          # words per passage (the last, shorter piece of a document is dropped)
    max_tokens: int = 128            # [CLS] + pieces + [SEP]; longer passages are an error ...
    truncate: bool = False           # ... unless truncation is asked for
    eval_passages_per_doc: int = 0   # val/test: this many evenly spaced passages per document; 0 = all
    dir: str = ""

    def __post_init__(self):
        if self.name != "brown":
            raise ValueError(f"data.name: the text_classification task reads the Brown corpus (\"brown\"), not {self.name!r}")
        if self.passage_words < 1 or self.max_tokens < 3 or self.eval_passages_per_doc < 0:
            raise ValueError("data.passage_words >= 1, data.max_tokens >= 3 and data.eval_passages_per_doc >= 0")


def passages(folder: Path, split: str, words: int, per_doc: int = 0) -> tuple[list[str], list[str]]:
    """(texts, genres) of a split's passages, in document order. The TF-IDF baseline
    (scripts/brown_tfidf_baseline.py) reads exactly these."""
    texts, genres = [], []
    for doc in brown.documents(folder, split):
        w = doc["text"].split()
        chunks = [" ".join(w[i:i + words]) for i in range(0, len(w) - words + 1, words)]
        if per_doc and len(chunks) > per_doc:
            chunks = [chunks[round(k * (len(chunks) - 1) / (per_doc - 1 or 1))] for k in range(per_doc)]
        texts += chunks
        genres += [doc["genre"]] * len(chunks)
    return texts, genres


def encoder_source(init: str, data: ClassifyDataConfig) -> Path:
    for candidate in (Path(init).expanduser(), data_root(data.dir or None) / init):
        if candidate.exists():
            return candidate
    raise ConfigError(f"model.init={init!r}: no such folder (nor under the data root); give a BERT "
                      "folder (e.g. run `qkv data get all-minilm-l6-v2` and use \"all-minilm-l6-v2\") "
                      "or a qkv mlm run directory")


def classifier_from(source: Path, num_labels: int, overrides: dict):
    """A classifier with the encoder of ``source`` (a text encoder of the registry), and
    that source's tokenizer."""
    from ..io import load

    encoder, tokenizer = load(source)
    if getattr(encoder, "role", None) != "text_encoder" or getattr(tokenizer, "kind", None) != "wordpiece":
        raise ConfigError(f"{source} is not a text encoder (BERT) with a WordPiece tokenizer")
    values = {**dataclasses.asdict(encoder.config), **overrides,
              "head": "classifier", "num_labels": num_labels, "add_pooler": True}
    model = models.build(encoder.model_type, **values)
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("cls.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    fresh = {k for k in missing if not k.startswith(("pooler.", "classifier."))}
    if fresh or unexpected:
        raise ConfigError(f"{source}: weights do not fit the classifier ({sorted(fresh | set(unexpected))[:4]})")
    return model, tokenizer


class TextClassificationTask(Task):
    name = "text_classification"
    data_config = ClassifyDataConfig

    def __init__(self, run, model, tokenizer):
        super().__init__(run, model, tokenizer)
        self.folder = prepared(self.data.name, self.data.dir or None)
        self.labels = json.loads((self.folder / "split.json").read_text())["genres"]
        self.batch_size = run.train.batch_size

    @classmethod
    def build(cls, run, run_dir: Path):
        data = from_dict(ClassifyDataConfig, run.data, where="data")
        overrides = dict(run.model)
        if "init" not in overrides:
            raise ConfigError("the text_classification task fine-tunes a pretrained BERT: set model.init to a "
                              "BERT folder or a qkv mlm run directory")
        overrides.pop("type", None)
        genres = json.loads((prepared(data.name, data.dir or None) / "split.json").read_text())["genres"]
        return classifier_from(encoder_source(overrides.pop("init"), data), len(genres), overrides)

    def prepare_training(self) -> None:
        self.train_set = self.encode("train", 0)
        self.val_set = self.encode("val", self.data.eval_passages_per_doc)
        self.key = mix64(np.array([self.run.seed], dtype=np.uint64))[0]
        self.tokens_per_sample = int(np.mean([len(x) for x in self.train_set[0]]))

    def encode(self, split: str, per_doc: int) -> tuple[list[list[int]], list[int]]:
        texts, genres = passages(self.folder, split, self.data.passage_words, per_doc)
        if not texts:
            raise ConfigError(f"the {split} split has no passages of {self.data.passage_words} words")
        ids = [self.tokenizer.encode(t, special=True) for t in texts]
        n = self.data.max_tokens
        too_long = sum(len(x) > n for x in ids)
        if too_long and not self.data.truncate:
            raise ConfigError(f"{too_long} {split} passages exceed data.max_tokens={n}; raise it, lower "
                              "data.passage_words, or set data.truncate = true")
        ids = [x if len(x) <= n else x[:n - 1] + x[-1:] for x in ids]
        return ids, [self.labels.index(g) for g in genres]

    def collate(self, ids: list[list[int]], labels: list[int]):
        width = max(map(len, ids))
        x = torch.tensor([s + [self.tokenizer.pad_token_id] * (width - len(s)) for s in ids])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids])
        return x, mask, torch.tensor(labels)

    def batches(self, first: int, count: int):
        j = np.arange(first, first + count, dtype=np.uint64)
        with np.errstate(over="ignore"):
            idx = (mix64(j ^ self.key) % np.uint64(len(self.train_set[0]))).astype(np.int64)
        return self.collate([self.train_set[0][i] for i in idx], [self.train_set[1][i] for i in idx])

    def loss(self, model, batch) -> torch.Tensor:
        x, mask, y = batch
        return model(x, mask, labels=y)[1]

    @torch.no_grad()
    def predict(self, model, dataset) -> np.ndarray:
        device = device_of(model)
        ids, out = dataset[0], []
        for start in range(0, len(ids), self.batch_size):
            x, mask, _ = self.collate(ids[start:start + self.batch_size], [0] * len(ids[start:start + self.batch_size]))
            out.append(model(x.to(device), mask.to(device)).argmax(-1).cpu())
        return torch.cat(out).numpy()

    def validate(self, model) -> dict[str, float]:
        return {"val_accuracy": float((self.predict(model, self.val_set) == np.array(self.val_set[1])).mean())}

    def evaluate(self, model, split: str, out: Path) -> dict[str, float]:
        """Passage accuracy on a split, per genre too; predictions go to out/predictions.jsonl."""
        dataset = self.encode(split, self.data.eval_passages_per_doc)
        pred, gold = self.predict(model, dataset), np.array(dataset[1])
        results = {"accuracy": float((pred == gold).mean()), "passages": len(gold)}
        for i, genre in enumerate(self.labels):
            if (gold == i).any():
                results[f"{genre}/accuracy"] = float((pred[gold == i] == i).mean())
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "predictions.jsonl", "".join(
            json.dumps({"gold": self.labels[g], "predicted": self.labels[p]}) + "\n" for g, p in zip(gold, pred)))
        return results
