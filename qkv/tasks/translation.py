"""The translation task: a sequence-to-sequence model trained on a parallel corpus as in
Vaswani et al. (2017), Section 5: a joint BPE vocabulary, batches by token count with length
bucketing, label-smoothed cross-entropy (epsilon 0.1, Section 5.4); Adam(0.9, 0.98, 1e-9)
with the inverse-square-root warmup schedule comes from ``[train]`` (see the config).

``[data]``: the corpus, the language pair, the vocabulary and the batch size in tokens.
``[model]``: any sequence-to-sequence model of the registry (``type = "transformer"`` or
``"lstm_seq2seq"``, or a preset such as ``preset = "transformer-base"``) and any config
field to override; vocabulary and special tokens come from the tokenizer. Batches hold
about ``data.max_tokens`` tokens each, one per process and micro-step, so there is no
``train.batch_size``: use ``train.grad_accum`` for larger steps.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import models
from ..config import from_dict
from ..data import data_root, dataset_module
from ..data.translation import TokenBatches, encode_pairs, joint_tokenizer, read_pairs
from ..errors import ConfigError
from ..files import atomic_write_text
from ..inference.translate import translate_texts
from ..tokenizers import find_tokenizer, special_ids
from .base import Option, Task, device_of

BUCKETS = ((1, 15), (16, 30), (31, 45), (46, 10**6))  # source length in words


@dataclass
class TranslationDataConfig:
    name: str = "bible-en-de"   # a parallel corpus prepared by `qkv data get`
    src: str = "4"              # source side (file suffix: train.4)
    tgt: str = "e"              # target side
    vocab_size: int = 8000      # joint BPE vocabulary
    max_tokens: int = 4096      # padded tokens per batch (source or target, the longer)
    label_smoothing: float = 0.1
    dir: str = ""               # data root; "" = $QKV_DATA or ~/.cache/qkv

    def __post_init__(self):
        if self.vocab_size <= 259:
            raise ValueError("data.vocab_size must exceed 259 (the byte alphabet and 3 special tokens)")
        if self.max_tokens < 16:
            raise ValueError(f"data.max_tokens must be at least 16, got {self.max_tokens}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"data.label_smoothing must be in [0, 1), got {self.label_smoothing}")


def corpus_folder(data: TranslationDataConfig) -> Path:
    folder = data_root(data.dir or None) / data.name
    module = dataset_module(data.name)
    if not getattr(module, "PARALLEL", False):
        raise ConfigError(f"data set {data.name!r} is not a parallel corpus; the translation task needs one "
                          "(e.g. data.name = \"bible-en-de\")")
    if not module.is_prepared(folder, (data.src, data.tgt)):
        raise ConfigError(f"data set {data.name!r} with {data.src} -> {data.tgt} is not prepared in {folder}; "
                          f"run `qkv data get {data.name} --src {data.src} --tgt {data.tgt}` first")
    return folder


class TranslationTask(Task):
    name = "translation"
    data_config = TranslationDataConfig
    batching = "tokens"
    options = (
        Option("beam", int, 4, "beam size; 1 = greedy"),
        Option("length_penalty", float, 0.6, "alpha of the length penalty ((5 + len) / 6)^alpha"),
        Option("max_sentences", int, None, "score only the first N sentences of the split"),
    )

    @classmethod
    def build(cls, run, run_dir: Path, log=print):
        data = from_dict(TranslationDataConfig, run.data, where="data")
        tokenizer = find_tokenizer(run_dir) or joint_tokenizer(corpus_folder(data), data.src, data.tgt,
                                                                data.vocab_size, log)
        vocab = {"vocab_size": tokenizer.vocab_size, **special_ids(tokenizer)}
        return models.from_section(run.model, "seq2seq", default="transformer", fixed=vocab), tokenizer

    def prepare_training(self, log=print) -> None:
        data, folder = self.data, corpus_folder(self.data)
        max_len = self.model.config.max_position_embeddings
        train = encode_pairs(self.tokenizer, *read_pairs(folder, "train", data.src, data.tgt), max_len, log)
        self.train = TokenBatches(*train, data.max_tokens, self.tokenizer, seed=self.run.seed)
        dev = encode_pairs(self.tokenizer, *read_pairs(folder, "dev", data.src, data.tgt), max_len, log)
        dev_batches = TokenBatches(*dev, data.max_tokens, self.tokenizer, seed=0)
        n_val = self.run.train.eval_batches
        every = max(1, len(dev_batches) // n_val)  # short and long sentences alike
        self.val_batches = [dev_batches.collate(b) for b in dev_batches.batches[::every][:n_val]]
        self.tokens_per_sample = self.train.target_tokens / len(self.train)
        log(f"{len(train[0]):,} training pairs in {len(self.train):,} batches of <= {data.max_tokens} tokens")

    def batches(self, first: int, count: int):
        if count != 1:
            raise ConfigError("the translation task batches by tokens: one batch per process and micro-step")
        return self.train.batch(first)

    def loss(self, model, batch) -> torch.Tensor:
        """Cross-entropy against targets smoothed by epsilon (Szegedy et al., 2016)."""
        logits = model(batch["input_ids"], batch["decoder_input_ids"], attention_mask=batch["attention_mask"])
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100,
                               label_smoothing=self.data.label_smoothing)

    def validate(self, model) -> dict[str, float]:
        """Dev loss per target token, without smoothing (and its perplexity)."""
        device = device_of(model)
        total, count = 0.0, 0
        for b in self.val_batches:
            b = {k: v.to(device) for k, v in b.items()}
            logits = model(b["input_ids"], b["decoder_input_ids"], attention_mask=b["attention_mask"])
            total += F.cross_entropy(logits.flatten(0, 1).float(), b["labels"].flatten(), reduction="sum").item()
            count += int((b["labels"] != -100).sum())
        return {"val_loss": total / count, "val_ppl": float(torch.tensor(total / count).exp())}

    def evaluate(self, model, split: str, out: Path, beam: int = 4, length_penalty: float = 0.6,
                 max_sentences: int | None = None) -> dict:
        """Detokenised BLEU and chrF (sacrebleu) of the translations of a split, overall and by
        source length; writes the hypotheses (one per line of the split) and the scores."""
        import sacrebleu

        if beam < 1:
            raise ConfigError(f"--beam must be at least 1, got {beam}")
        if max_sentences is not None and max_sentences < 1:
            raise ConfigError(f"--max-sentences must be at least 1, got {max_sentences}")
        data = self.data
        source, target = read_pairs(corpus_folder(data), split, data.src, data.tgt)
        rows = [i for i in range(len(source)) if source[i].strip() and target[i].strip()][:max_sentences]
        t0 = time.perf_counter()
        hyps = translate_texts(model, self.tokenizer, [source[i] for i in rows], beam=beam, length_penalty=length_penalty)
        seconds = time.perf_counter() - t0
        refs = [target[i] for i in rows]
        bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
        empty = sum(1 for s, t in zip(source, target) if not (s.strip() and t.strip()))
        results = {"sentences": len(rows), "skipped_empty_pairs": empty,
                   "beam": beam, "length_penalty": length_penalty,
                   "bleu": bleu.corpus_score(hyps, [refs]).score, "chrf": chrf.corpus_score(hyps, [refs]).score,
                   "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}
        for lo, hi in BUCKETS:
            idx = [k for k, i in enumerate(rows) if lo <= len(source[i].split()) <= hi]
            name = f"bleu_src_{lo}-{hi}_words" if hi < 10**6 else f"bleu_src_{lo}+_words"
            if idx:
                results[name] = bleu.corpus_score([hyps[k] for k in idx], [[refs[k] for k in idx]]).score
                results[name.replace("bleu_", "n_")] = len(idx)
        results["decode_s"] = round(seconds, 1)
        out.mkdir(parents=True, exist_ok=True)
        lines = [""] * len(source)
        for k, i in enumerate(rows):
            lines[i] = hyps[k]
        stem = f"hyp.beam{beam}"
        atomic_write_text(out / f"{stem}.txt", "\n".join(lines) + "\n")
        atomic_write_text(out / f"{stem}.json", json.dumps(results, indent=2) + "\n")
        results["hypotheses"] = str(out / f"{stem}.txt")
        return results
