"""Real data sets: where they come from, how they are prepared, read and batched.

``qkv data get NAME`` prepares a data set under the data root: ``$QKV_DATA`` if set,
else ``~/.cache/qkv``. Preparing twice is a no-op.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import bible, brown, detection, fashion_mnist, minilm, mnist, nlp_en_de, shakespeare
from .errors import DataError
from .lm import corpus_tokenizer, encode_corpus

DATASETS = {"shakespeare": shakespeare, "brown": brown, "bible-en-de": bible, "nlp-en-de": nlp_en_de,
            "fashion-mnist": fashion_mnist, "mnist": mnist, "all-minilm-l6-v2": minilm,
            **detection.SETS}


def data_root(override: str | Path | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get("QKV_DATA") or Path.home() / ".cache" / "qkv").expanduser()


def dataset_module(name: str):
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown data set {name!r}; qkv knows: {', '.join(sorted(DATASETS))}") from None


def get(name: str, root: str | Path | None = None, source: str | Path | None = None, log=print,
        **options) -> Path:
    """Download (or read from ``source``) and prepare data set ``name``; returns its folder.
    ``options`` are the data set's own (e.g. ``src``/``tgt`` for bible-en-de)."""
    module = dataset_module(name)
    if options and not getattr(module, "PARALLEL", False):
        raise DataError(f"{', '.join('--' + k for k in options)}: {name!r} is not a translation corpus")
    folder = module.prepare(data_root(root) / name, source=source, log=log, **options)
    if getattr(module, "TEXT_CORPUS", False):  # train.txt/val.txt: cache the default encoding
        tokens = encode_corpus(folder, corpus_tokenizer(folder, "char"))
        log(f"character tokens cached: {len(tokens['train']):,} train, {len(tokens['val']):,} val")
    return folder


def prepared(name: str, root: str | Path | None = None) -> Path:
    """The folder of an already prepared data set, or a DataError saying how to get it."""
    folder = data_root(root) / name
    if not dataset_module(name).is_prepared(folder):
        raise DataError(
            f"data set {name!r} is not prepared in {folder}; run `qkv data get {name}` first"
        )
    return folder


__all__ = ["DATASETS", "DataError", "data_root", "get", "prepared"]
