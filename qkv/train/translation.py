"""The translation task: a sequence-to-sequence model trained on a parallel corpus as in
Vaswani et al. (2017), Section 5: a joint BPE vocabulary, batches by token count with length
bucketing, label-smoothed cross-entropy (epsilon 0.1, Section 5.4); Adam(0.9, 0.98, 1e-9)
with the inverse-square-root warmup schedule comes from ``[train]`` (see the config).

``[data]``: the corpus, the language pair, the vocabulary and batch size in tokens.
``[model]``: ``type`` (one of ``SEQ2SEQ``), optionally ``preset`` (small | base | big), and
any config field to override; vocabulary and special tokens come from the tokenizer.
One training "sample" is one bucketed batch: set ``train.batch_size = 1``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ConfigError, from_dict
from ..data import data_root, dataset_module
from ..data.translation import TokenBatches, encode_pairs, joint_tokenizer, read_pairs
from ..files import atomic_write_text
from ..io import build_model, load
from ..tokenizers import find_tokenizer, special_ids
from ..translate import SEQ2SEQ, check_seq2seq, translate_texts
from .config import RunConfig
from .distributed import world

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


def build_seq2seq(model_cfg: dict, tokenizer):
    cfg = dict(model_cfg)
    model_type = cfg.pop("type", "transformer")
    if model_type not in SEQ2SEQ:
        raise ConfigError(f"the translation task trains a sequence-to-sequence model ({SEQ2SEQ}), not {model_type!r}")
    vocab = {"vocab_size": tokenizer.vocab_size, **special_ids(tokenizer)}
    preset = cfg.pop("preset", None)
    if preset is not None:
        from ..models import MODELS

        presets = getattr(MODELS[model_type].config_class, "preset", None)
        if presets is None:
            raise ConfigError(f"model type {model_type!r} has no presets; remove model.preset")
        try:
            cfg = {**{k: v for k, v in vars(presets(preset)).items() if k not in vocab}, **cfg}
        except ValueError as e:
            raise ConfigError(f"model.preset: {e}") from None
    clash = {k: cfg[k] for k in vocab if k in cfg and cfg[k] != vocab[k]}
    if clash:
        raise ConfigError(f"[model] {clash} contradicts the tokenizer ({vocab}); remove them")
    return build_model({"model_type": model_type, **cfg, **vocab})


class TranslationTask:
    def __init__(self, run: RunConfig, run_dir: Path, log=print):
        self.data = data = from_dict(TranslationDataConfig, run.data, where="data")
        if run.train.batch_size != world().world_size:
            raise ConfigError("the translation task batches by tokens: set train.batch_size to the number of "
                              "processes (one batch of data.max_tokens tokens per process and micro-step) "
                              "and use train.grad_accum for more")
        folder = corpus_folder(data)
        self.tokenizer = find_tokenizer(run_dir) or joint_tokenizer(folder, data.src, data.tgt, data.vocab_size, log)
        self.model = build_seq2seq(run.model, self.tokenizer)
        max_len = self.model.config.max_position_embeddings
        train = encode_pairs(self.tokenizer, *read_pairs(folder, "train", data.src, data.tgt), max_len, log)
        self.train = TokenBatches(*train, data.max_tokens, self.tokenizer, seed=run.seed)
        dev = encode_pairs(self.tokenizer, *read_pairs(folder, "dev", data.src, data.tgt), max_len, log)
        dev_batches = TokenBatches(*dev, data.max_tokens, self.tokenizer, seed=0)
        every = max(1, len(dev_batches) // run.train.eval_batches)  # short and long sentences alike
        self.val_batches = [dev_batches.collate(b) for b in dev_batches.batches[::every][:run.train.eval_batches]]
        self.tokens_per_sample = self.train.target_tokens / len(self.train)
        log(f"{len(train[0]):,} training pairs in {len(self.train):,} batches of <= {data.max_tokens} tokens")

    def batches(self, first: int, count: int):
        if count != 1:
            raise ConfigError("the translation task batches by tokens: set train.batch_size = 1")
        return self.train.batch(first)

    def loss(self, model, batch) -> torch.Tensor:
        """Cross-entropy against targets smoothed by epsilon (Szegedy et al., 2016)."""
        logits = model(batch["input_ids"], batch["decoder_input_ids"], attention_mask=batch["attention_mask"])
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100,
                               label_smoothing=self.data.label_smoothing)

    def evaluate(self, model) -> dict[str, float]:
        """Dev loss per target token, without smoothing (and its perplexity)."""
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for b in self.val_batches:
            b = {k: v.to(device) for k, v in b.items()}
            logits = model(b["input_ids"], b["decoder_input_ids"], attention_mask=b["attention_mask"])
            total += F.cross_entropy(logits.flatten(0, 1).float(), b["labels"].flatten(), reduction="sum").item()
            count += int((b["labels"] != -100).sum())
        return {"val_loss": total / count, "val_ppl": float(torch.tensor(total / count).exp())}

    @staticmethod
    def evaluate_run(run_dir: Path, run: RunConfig, split: str, out: Path, beam: int = 4,
                     length_penalty: float = 0.6, max_sentences: int | None = None) -> dict:
        """Detokenised BLEU and chrF (sacrebleu) of the translations of a split, overall and by
        source length; writes the hypotheses (one per line of the split) and the scores."""
        import sacrebleu

        model, tokenizer = load(run_dir)
        check_seq2seq(model, run_dir)
        data = from_dict(TranslationDataConfig, run.data, where="data")
        source, target = read_pairs(corpus_folder(data), split, data.src, data.tgt)
        rows = [i for i in range(len(source)) if source[i].strip() and target[i].strip()][:max_sentences]
        t0 = time.perf_counter()
        hyps = translate_texts(model, tokenizer, [source[i] for i in rows], beam=beam, length_penalty=length_penalty)
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
