"""Object detection scenes built from real images: MNIST digits or Fashion-MNIST clothes
pasted on 96x96 grey canvases, with exact boxes in COCO JSON.

No detection set with boxes is reachable from these machines, so the scenes are built,
as the "MNIST detection" toy sets used to try DETR (Carion et al. 2020, "End-to-End
Object Detection with Transformers") are: each canvas holds 1-6 items of the source set,
each scaled to 16-56 px on its longer side (the item's tight crop, resampled by an exact
integer bilinear filter) and put at a random place where its box overlaps the others
little (IoU <= 0.3, no box half covered by another or by the earlier boxes together; an
item that finds no such place in 20 tries is left out). Items are blended by
maximum, so every pixel is a real one (bilinear weights are non-negative: a resampled
pixel lies between real ones). A few small patches (6-12 px) cut from other items of the
same split are scattered outside the boxes, without a box, as in cluttered MNIST (Mnih et
al. 2014), so that a model must learn what a whole object is.

The box of an item is TIGHT and exact: the extent of its pixels above ``THRESHOLD`` as
pasted (fainter pixels of a resampled item are set to 0, so nothing of an item lies
outside its box). Boxes are in pixels, ``x0 <= col < x1``; a category id is the source's
class index 0..9, the index a model predicts.

Canvases of a split take their items only from the same split of the source set (test
canvases from its test images). Each split has its own numpy Generator with a fixed seed
and the resampling is integer arithmetic, so every machine builds the same canvases (and
the npz members carry a fixed timestamp: the same files, byte for byte, given the same
zlib). The constants below are the defaults of ``Spec``; ``prepare(..., spec=Spec(clutter=(0, 0)))``
draws without clutter.

On disk, ``<root>/mnist-detection/`` (or ``fashion-detection``): ``{split}.npz`` with
``images`` uint8 (N, 96, 96); ``{split}.json`` in COCO format (image id = index in the
npz, ``bbox`` [x, y, w, h], ``category_id`` = class index); ``meta.json``, written last,
with the source, class names, image size, counts and the generation parameters.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import zipfile
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from ..files import atomic_write, atomic_write_text
from .errors import DataError
from .images import META, SPLITS, load_split, read_meta

CANVAS = 96                 # canvas side in pixels
ITEMS = (1, 6)              # items a canvas (inclusive)
SCALE = (16, 56)            # an item's longer side in pixels (inclusive)
MAX_IOU = 0.3               # a placement overlapping a box more than this is redrawn
MAX_COVER = 0.5             # ... as is one covering half of a box, or half covered by the boxes
TRIES = 20                  # positions tried for an item or a clutter patch before it is dropped
THRESHOLD = 16              # an item's pixel counts (and is kept) above this grey value
CLUTTER = (1, 4)            # clutter patches a canvas; (0, 0) turns clutter off
CLUTTER_SIZE = (6, 12)      # side of a clutter patch in pixels (inclusive) ...
CLUTTER_SCALE = (32, 56)    # ... cut from an item scaled to this longer side: a fragment
SEED = 0
COUNTS = {"train": 20_000, "val": 1_000, "test": 2_000}
ONE = 1 << 12               # fixed-point 1.0 of the resampling weights

__all__ = ["SETS", "DetectionSet", "Spec", "Scene", "read_split", "coco_file", "scenes",
           "build_split", "resize"]


@dataclasses.dataclass(frozen=True)
class Spec:
    """How the canvases are drawn; the defaults are the module's constants."""
    canvas: int = CANVAS
    items: tuple[int, int] = ITEMS
    scale: tuple[int, int] = SCALE
    max_iou: float = MAX_IOU
    max_cover: float = MAX_COVER
    threshold: int = THRESHOLD
    clutter: tuple[int, int] = CLUTTER
    clutter_size: tuple[int, int] = CLUTTER_SIZE
    clutter_scale: tuple[int, int] = CLUTTER_SCALE
    seed: int = SEED


class Scene(NamedTuple):
    """One canvas and what was drawn on it (``layers`` and ``sources`` are for checking)."""
    image: np.ndarray          # (H, W) uint8
    boxes: np.ndarray          # (k, 4) int64 x0, y0, x1, y1 in pixels
    labels: np.ndarray         # (k,) int64 class index
    sources: np.ndarray        # (k,) int64 index of each item's image in the source split
    layers: list               # k uint8 arrays: each item as pasted, the size of its box


# ---------------------------------------------------------------- resampling, items


@functools.lru_cache(maxsize=None)
def _weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) int64 bilinear weights in units of ONE, each row summing to ONE:
    a triangle filter, widened by the factor when shrinking (antialiased, as PIL does)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centre = (np.arange(n_out) + 0.5) * scale - 0.5            # in input pixel coordinates
    w = np.clip(1 - np.abs(np.arange(n_in)[None, :] - centre[:, None]) / support, 0, None)
    w = np.rint(w / w.sum(1, keepdims=True) * ONE).astype(np.int64)
    w[np.arange(n_out), w.argmax(1)] += ONE - w.sum(1)          # exact row sums
    return w


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resampling of a uint8 image in integer arithmetic: the same bytes on every
    machine, and every output pixel a weighted mean of real ones."""
    acc = _weights(image.shape[0], height) @ image.astype(np.int64) @ _weights(image.shape[1], width).T
    return ((acc + ONE * ONE // 2) // (ONE * ONE)).astype(np.uint8)


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) int64 (x0, y0, x1, y1) extent of the True pixels of each (H, W) mask (x1, y1
    exclusive); (0, 0, 0, 0) for an empty mask."""
    rows, cols = masks.any(2), masks.any(1)
    h, w = masks.shape[1:]
    boxes = np.stack([cols.argmax(1), rows.argmax(1), w - cols[:, ::-1].argmax(1),
                      h - rows[:, ::-1].argmax(1)], 1).astype(np.int64)
    boxes[~rows.any(1)] = 0
    return boxes


def render_item(image: np.ndarray, crop, longer: int, threshold: int) -> np.ndarray | None:
    """A source image's tight crop resized to ``longer`` px on its longer side, pixels at or
    below ``threshold`` set to 0, cropped to the rest: the item exactly as pasted (its
    shape is its box). None where nothing is left."""
    x0, y0, x1, y1 = (int(v) for v in crop)
    h, w = y1 - y0, x1 - x0
    side = max(h, w)
    size = (max(1, (2 * h * longer + side) // (2 * side)), max(1, (2 * w * longer + side) // (2 * side)))
    item = resize(image[y0:y1, x0:x1], *size)
    item[item <= threshold] = 0
    bx0, by0, bx1, by1 = tight_boxes(item[None] > 0)[0]
    return item[by0:by1, bx0:bx1] if bx1 > bx0 else None


def _overlaps(box, boxes, occupied: np.ndarray, max_iou: float, max_cover: float) -> bool:
    """Whether ``box`` overlaps the earlier ``boxes`` more than allowed: an IoU above
    ``max_iou``, more than ``max_cover`` of an earlier box inside it, or more than
    ``max_cover`` of it inside the earlier boxes together (``occupied``: their union)."""
    x0, y0, x1, y1 = box
    if occupied[y0:y1, x0:x1].mean() > max_cover:
        return True
    area = (x1 - x0) * (y1 - y0)
    for a0, b0, a1, b1 in boxes:
        inter = max(0, min(x1, a1) - max(x0, a0)) * max(0, min(y1, b1) - max(y0, b0))
        other = (a1 - a0) * (b1 - b0)
        if inter and (inter / (area + other - inter) > max_iou or inter / other > max_cover):
            return True
    return False


# ---------------------------------------------------------------- drawing canvases


def _place(rng: np.random.Generator, shape, canvas: int, ok) -> tuple[int, int, int, int] | None:
    """A random box of ``shape`` inside the canvas that ``ok(box)`` accepts, or None."""
    h, w = shape
    for _ in range(TRIES):
        x, y = (int(v) for v in rng.integers(0, [canvas - w + 1, canvas - h + 1]))
        if ok(box := (x, y, x + w, y + h)):
            return box
    return None


def _clutter_patch(rng: np.random.Generator, image: np.ndarray, crop, spec: Spec) -> np.ndarray | None:
    """A window of 6-12 px (``spec.clutter_size``) on a source item scaled to 32-56 px
    (``spec.clutter_scale``): a fragment of an item, too small a part of it to pass for a
    whole one. None if it holds fewer real pixels than its side."""
    side = int(rng.integers(spec.clutter_size[0], spec.clutter_size[1] + 1))
    item = render_item(image, crop, int(rng.integers(spec.clutter_scale[0], spec.clutter_scale[1] + 1)),
                       spec.threshold)
    if item is None:
        return None
    h, w = min(side, item.shape[0]), min(side, item.shape[1])
    top, left = (int(v) for v in rng.integers(0, [item.shape[0] - h + 1, item.shape[1] - w + 1]))
    patch = item[top:top + h, left:left + w]
    return patch if np.count_nonzero(patch) >= side else None


def draw_scene(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, crops: np.ndarray,
               spec: Spec) -> Scene:
    """One canvas from the source images (and nothing else): items, then clutter."""
    canvas = np.zeros((spec.canvas, spec.canvas), np.uint8)
    occupied = np.zeros_like(canvas, bool)                     # the union of the boxes so far
    boxes, labs, sources, layers = [], [], [], []
    for _ in range(int(rng.integers(spec.items[0], spec.items[1] + 1))):
        j = int(rng.integers(len(images)))
        item = render_item(images[j], crops[j], int(rng.integers(spec.scale[0], spec.scale[1] + 1)), spec.threshold)
        box = None if item is None else _place(
            rng, item.shape, spec.canvas, lambda b: not _overlaps(b, boxes, occupied, spec.max_iou, spec.max_cover))
        if box is None:
            continue
        x0, y0, x1, y1 = box
        np.maximum(canvas[y0:y1, x0:x1], item, out=canvas[y0:y1, x0:x1])
        occupied[y0:y1, x0:x1] = True
        boxes.append(box), labs.append(int(labels[j])), sources.append(j), layers.append(item)
    for _ in range(int(rng.integers(spec.clutter[0], spec.clutter[1] + 1))):
        j = int(rng.integers(len(images)))
        patch = _clutter_patch(rng, images[j], crops[j], spec)
        box = None if patch is None else _place(rng, patch.shape, spec.canvas,
                                                lambda b: not occupied[b[1]:b[3], b[0]:b[2]].any())
        if box is not None:
            np.maximum(canvas[box[1]:box[3], box[0]:box[2]], patch, out=canvas[box[1]:box[3], box[0]:box[2]])
    return Scene(canvas, np.array(boxes, np.int64).reshape(-1, 4), np.array(labs, np.int64),
                 np.array(sources, np.int64), layers)


def split_rng(split: str, seed: int = SEED) -> np.random.Generator:
    """The fixed random stream of one split."""
    return np.random.default_rng([seed, SPLITS.index(split)])


def scenes(images: np.ndarray, labels: np.ndarray, count: int, split: str, spec: Spec = Spec()) -> Iterator[Scene]:
    """The ``count`` scenes of ``split`` drawn from that split's source images."""
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"detection scenes need grey uint8 (N, H, W) source images, got {images.dtype} {images.shape}")
    crops = tight_boxes(images > spec.threshold)
    keep = np.flatnonzero(crops[:, 2] > crops[:, 0])           # drop blank source images
    images, labels, crops = images[keep], labels[keep], crops[keep]
    rng = split_rng(split, spec.seed)
    for _ in range(count):
        scene = draw_scene(rng, images, labels, crops, spec)
        yield scene._replace(sources=keep[scene.sources])


def build_split(images: np.ndarray, labels: np.ndarray, count: int, split: str,
                spec: Spec = Spec()) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """(canvases uint8 (count, H, W), [(boxes, labels)] per canvas) of one split."""
    canvases = np.empty((count, spec.canvas, spec.canvas), np.uint8)
    targets = []
    for i, scene in enumerate(scenes(images, labels, count, split, spec)):
        canvases[i] = scene.image
        targets.append((scene.boxes, scene.labels))
    return canvases, targets


# ---------------------------------------------------------------- files


def coco_json(split: str, targets, class_names: list[str], canvas: int) -> dict:
    """The COCO dict of a split: image id = index in the npz, category id = class index."""
    images = [{"id": i, "file_name": f"{split}/{i:06d}.png", "width": canvas, "height": canvas}
              for i in range(len(targets))]
    annotations = []
    for i, (boxes, labels) in enumerate(targets):
        for (x0, y0, x1, y1), label in zip(boxes.tolist(), labels.tolist()):
            w, h = x1 - x0, y1 - y0
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label,
                                "bbox": [float(x0), float(y0), float(w), float(h)], "area": float(w * h),
                                "iscrowd": 0})
    return {"info": {"description": f"{split} canvases; category_id is the class index 0..{len(class_names) - 1}"},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": i, "name": name} for i, name in enumerate(class_names)]}


def _save_npz(tmp: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed with a fixed timestamp on each member, so the same arrays give
    the same bytes (numpy stamps the current time)."""
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


def coco_file(folder: str | Path, split: str) -> Path:
    """The COCO JSON of one split (for pycocotools' COCO / COCOeval)."""
    file = Path(folder) / f"{split}.json"
    if not file.is_file():
        raise DataError(f"{file} is missing; {_fix(folder)}")
    return file


def _fix(folder) -> str:
    name = Path(folder).name
    return f"run `qkv data get {name if name in SETS else 'mnist-detection'}`"


def read_split(folder: str | Path, split: str) -> tuple[np.ndarray, list[dict]]:
    """(images uint8 (N, H, W), targets) of one split, where ``targets[i]`` is
    ``{"boxes": float32 (k, 4) x0, y0, x1, y1 in pixels, "labels": int64 (k,) class index}``."""
    folder = Path(folder)
    npz, js = folder / f"{split}.npz", coco_file(folder, split)
    if not npz.is_file():
        raise DataError(f"{npz} is missing; {_fix(folder)}")
    try:
        with np.load(npz, allow_pickle=False) as z:
            images = z["images"]
    except Exception as e:  # a truncated zip, a missing member, a bad header: all one message
        raise DataError(f"{npz} is unreadable ({type(e).__name__}); delete it and {_fix(folder)}") from None
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{npz} holds {images.dtype} {images.shape}, not uint8 (N, H, W); delete it and {_fix(folder)}")
    try:
        coco = json.loads(js.read_text())
        ann = coco["annotations"]
        boxes = np.array([a["bbox"] for a in ann], np.float32).reshape(-1, 4)
        owner = np.array([a["image_id"] for a in ann], np.int64)
        labels = np.array([a["category_id"] for a in ann], np.int64)
        ok = len(coco["images"]) == len(images) and (len(owner) == 0 or (0 <= owner.min() and owner.max() < len(images)))
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise DataError(f"{js} is not a COCO file of this set ({type(e).__name__}: {e}); delete it and {_fix(folder)}") from None
    if not ok:
        raise DataError(f"{js} does not match {npz.name} ({len(images)} images); delete both and {_fix(folder)}")
    boxes[:, 2:] += boxes[:, :2]                                  # x, y, w, h -> x0, y0, x1, y1
    order = np.argsort(owner, kind="stable")
    starts = np.searchsorted(owner[order], np.arange(len(images) + 1))
    targets = [{"boxes": boxes[order[a:b]], "labels": labels[order[a:b]]} for a, b in zip(starts[:-1], starts[1:])]
    return images, targets


class DetectionSet:
    """A detection set built from a prepared image classification set (``source``):
    what ``qkv data get NAME`` prepares (``prepare``, ``is_prepared``)."""

    def __init__(self, name: str, source: str, doc: str):
        self.name, self.source, self.__doc__ = name, source, doc

    def __repr__(self) -> str:
        return f"DetectionSet({self.name!r}, source={self.source!r})"

    def is_prepared(self, folder: str | Path) -> bool:
        folder = Path(folder)
        return (folder / META).is_file() and all(
            (folder / f"{s}{ext}").is_file() for s in SPLITS for ext in (".npz", ".json"))

    def _source_folder(self, folder: Path, source, log) -> Path:
        """The prepared source set: ``source`` if given, else ``<root>/<source>``, prepared now if need be."""
        if source is None:
            from . import get  # qkv.data imports this module
            return get(self.source, folder.parent, log=log)
        source = Path(source).expanduser()
        if not (source / META).is_file():
            raise DataError(f"--from {source}: not a prepared {self.source} folder (no {META}); "
                            f"run `qkv data get {self.source}` and give its folder")
        return source

    def prepare(self, folder: str | Path, source: str | Path | None = None, log=print,
                counts: dict[str, int] | None = None, spec: Spec = Spec()) -> Path:
        """Draw the canvases of every split from the same split of the source set and write
        them; a no-op when the folder is prepared. ``counts`` (split -> canvases) defaults
        to COUNTS; ``source`` is a prepared source folder (default: the one in this root)."""
        folder = Path(folder)
        if self.is_prepared(folder):
            log(f"{self.name} is already prepared in {folder}")
            return folder
        src = self._source_folder(folder, source, log)
        src_meta = read_meta(src)
        counts = dict(COUNTS if counts is None else counts)
        if sorted(counts) != sorted(SPLITS) or not all(isinstance(n, int) and n >= 0 for n in counts.values()):
            raise DataError(f"counts must give a number of canvases for each of {', '.join(SPLITS)}, got {counts}")
        folder.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            images, labels = load_split(src, split)
            canvases, targets = build_split(images, labels, counts[split], split, spec)
            atomic_write(folder / f"{split}.npz", lambda tmp: _save_npz(tmp, images=canvases))
            coco = coco_json(split, targets, src_meta["labels"], spec.canvas)
            atomic_write_text(folder / f"{split}.json", json.dumps(coco, separators=(",", ":")) + "\n")
            log(f"{self.name} {split}: {len(canvases):,} canvases, {len(coco['annotations']):,} boxes")
        meta = {"source": self.source, "source_origin": src_meta.get("source"), "labels": src_meta["labels"],
                "image_size": [spec.canvas, spec.canvas], "channels": 1, "counts": counts,
                "category_id": "class index 0..N-1 (the index in labels)", "bbox": "COCO [x, y, w, h], pixels",
                **{k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()
                   if k != "canvas"}}
        atomic_write_text(folder / META, json.dumps(meta, indent=2) + "\n")
        log(f"{self.name}: " + ", ".join(f"{n:,} {s}" for s, n in counts.items()) + f" canvases in {folder}")
        return folder


MNIST_DETECTION = DetectionSet(
    "mnist-detection", "mnist",
    "MNIST digits pasted on 96x96 canvases (1-6 each, 16-56 px), tight boxes in COCO JSON")
FASHION_DETECTION = DetectionSet(
    "fashion-detection", "fashion-mnist",
    "Fashion-MNIST clothes pasted on 96x96 canvases (1-6 each, 16-56 px), tight boxes in COCO JSON")
SETS = {s.name: s for s in (MNIST_DETECTION, FASHION_DETECTION)}
