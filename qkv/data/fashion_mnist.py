"""Fashion-MNIST: 70,000 28x28 grey images of clothing in 10 classes (Debian package).

Xiao et al. (2017), MIT licence, from the Debian package ``dataset-fashion-mnist`` (IDX
files under ``/usr/share/datasets/fashion-mnist/``).

Those files are used where the package is installed; else the package is fetched with
``apt-get download`` (no root needed) and unpacked with ``dpkg-deb -x``. Elsewhere, point
``--from`` at a folder holding the four IDX files (or at the .deb). 5,000 training images
(a fixed permutation) are held out for validation; the official 10,000 test images are
kept for the final figure.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import DataError
from .images import carve_val, is_prepared, read_idx, save_splits

PACKAGE = "dataset-fashion-mnist"
SYSTEM = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
          "Ankle boot"]
FLIPS = True  # clothes look the same mirrored left-right

__all__ = ["is_prepared", "prepare"]


def _has_files(folder: Path) -> bool:
    return all((folder / f).is_file() for pair in FILES.values() for f in pair)


def _unpack_deb(deb: Path, dest: Path) -> Path:
    if shutil.which("dpkg-deb") is None:
        raise DataError(f"unpacking {deb} needs dpkg-deb; unpack it elsewhere and use --from FOLDER")
    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataError(f"dpkg-deb could not unpack {deb}: {proc.stderr.strip()}")
    return dest / SYSTEM.relative_to("/")


def _download(staging: Path, log) -> Path:
    log(f"{SYSTEM} not found; downloading the Debian package {PACKAGE} ...")
    proc = subprocess.run(["apt-get", "download", PACKAGE], cwd=staging, capture_output=True, text=True)
    debs = sorted(staging.glob(f"{PACKAGE}_*.deb"))
    if proc.returncode != 0 or not debs:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no .deb was saved"]
        raise DataError(f"`apt-get download {PACKAGE}` failed ({detail[0]}). Install the package "
                        f"(apt-get install {PACKAGE}), or get the four IDX files elsewhere and run "
                        "`qkv data get fashion-mnist --from FOLDER`")
    return _unpack_deb(debs[0], staging / "deb")


def prepare(folder: Path, source: str | Path | None = None, log=print) -> Path:
    if is_prepared(folder):
        log(f"fashion-mnist is already prepared in {folder}")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        origin = str(source) if source is not None else (str(SYSTEM) if _has_files(SYSTEM) else f"apt {PACKAGE}")
        if source is not None:
            src = Path(source).expanduser()
            if src.is_file() and src.suffix == ".deb":
                src = _unpack_deb(src, Path(tmp))
            elif not src.is_dir():
                raise DataError(f"--from {src}: give a folder with the IDX files, or the {PACKAGE} .deb")
        else:
            src = SYSTEM if _has_files(SYSTEM) else _download(Path(tmp), log)
        if not _has_files(src):
            raise DataError(f"{src} lacks the Fashion-MNIST IDX files "
                            f"{', '.join(f for pair in FILES.values() for f in pair)}")
        splits = {}
        for split, (images, labels) in FILES.items():
            x, y = read_idx(src / images), read_idx(src / labels)
            if x.ndim != 3 or y.shape != x.shape[:1]:
                raise DataError(f"{src / images}: expected (N, 28, 28) images with N labels, got {x.shape}, {y.shape}")
            splits[split] = (x, y)
        splits["train"], splits["val"] = carve_val(*splits["train"])
        save_splits(folder, {s: splits[s] for s in ("train", "val", "test")}, LABELS, origin, log)
    return folder
