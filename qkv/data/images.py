"""Image classification data sets on disk: one ``.npz`` per split (``images`` uint8
(N, H, W) or (N, H, W, C), ``labels`` int64 (N,)) and ``meta.json`` (class names, image
shape, counts, source), written last, which marks the folder as prepared. Arrays are
read with ``allow_pickle=False``.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write, atomic_write_text
from .errors import DataError

META = "meta.json"
SPLITS = ("train", "val", "test")
VAL_FRACTION = 1 / 12  # 5,000 of Fashion-MNIST's 60,000 training images


def is_prepared(folder: Path) -> bool:
    return (Path(folder) / META).is_file()


def read_idx(file: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format; gzipped or not) as a uint8 array: magic
    0x0000 08 NDIM (8 = unsigned byte), NDIM big-endian int32 sizes, then the data."""
    try:
        raw = (gzip.open if file.suffix == ".gz" else open)(file, "rb").read()
    except OSError as e:
        raise DataError(f"{file} is not readable ({e})") from e
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 8:
        raise DataError(f"{file} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{file} is truncated: header says {shape}, found {data.size} bytes of data")
    return data.reshape(shape)


def carve_val(images: np.ndarray, labels: np.ndarray, seed: int = 0):
    """Split a training set into (train, val) by a fixed permutation: the same
    validation images on every machine."""
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = max(1, round(len(images) * VAL_FRACTION))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return (images[train], labels[train]), (images[val], labels[val])


def save_splits(folder: Path, splits: dict, class_names: list[str], source: str, log=print) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in splits.items():
        if len(images) != len(labels) or images.dtype != np.uint8:
            raise DataError(f"{name}: {len(images)} uint8 images expected with as many labels")
        labels = labels.astype(np.int64)
        if labels.min() < 0 or labels.max() >= len(class_names):
            raise DataError(f"{name}: labels outside 0..{len(class_names) - 1}")
        atomic_write(folder / f"{name}.npz", lambda tmp: np.savez(open(tmp, "wb"), images=images, labels=labels))
    first = splits["train"][0]
    meta = {"source": source, "labels": class_names, "image_size": list(first.shape[1:3]),
            "channels": 1 if first.ndim == 3 else first.shape[3],
            "counts": {name: len(labels) for name, (_, labels) in splits.items()}}
    atomic_write_text(folder / META, json.dumps(meta, indent=2) + "\n")
    log(f"{folder.name}: " + ", ".join(f"{n:,} {s}" for s, n in meta["counts"].items()) + f" images in {folder}")


def read_meta(folder: Path) -> dict:
    return json.loads((Path(folder) / META).read_text())


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8, labels int64) of one split."""
    file = Path(folder) / f"{split}.npz"
    if not file.is_file():
        raise DataError(f"{folder} has no {split!r} split; it has {[s for s in SPLITS if (Path(folder) / f'{s}.npz').is_file()]}")
    with np.load(file, allow_pickle=False) as z:
        return z["images"], z["labels"]


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images (N, H, W[, C]) scaled to [0, 1],
    rounded to 4 places: the ``image_mean`` and ``image_std`` a model's config normalises with."""
    x = torch.from_numpy(images).float().div_(255)
    mean, std = x.mean((0, 1, 2)).reshape(-1), x.std((0, 1, 2)).reshape(-1)  # one value for grey
    return [round(m, 4) for m in mean.tolist()], [round(s, 4) for s in std.tolist()]


def to_pixels(images: np.ndarray | torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> normalised float (N, C, H, W): (x / 255 - mean) / std."""
    x = torch.as_tensor(images)
    x = (x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)).float().div_(255)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
