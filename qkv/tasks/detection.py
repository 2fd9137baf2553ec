"""Object detection as set prediction (``task = "detection"``): any ``object_detector`` of
the model registry (DETR, Deformable DETR) trained on a prepared detection data set
(``qkv data get mnist-detection``), scored with COCO's mean average precision.

The model predicts a fixed set of (class, box) pairs per image; its loss matches them to
the targets one to one (the Hungarian matching in ``qkv.models.detection``), so there are
no anchors and no non-maximum suppression (Carion et al. 2020, Section 3.1).

Augmentation moves the boxes with the pixels: a random zoom (``data.scale``: the canvas
is resized by a factor in [1 - scale, 1 + scale], then cropped or padded back to its size
at a random place), horizontal flips where a mirrored item keeps its class (clothes, not
digits); a box that loses more than half its area to the crop is dropped. Every random
draw of a batch comes from a generator seeded by (run seed, first sample index), so a
resumed run sees exactly the same batches.

Validation scores the loss and COCO mAP on a fixed part of the validation split, so
``metrics.jsonl`` holds mAP against training steps; ``qkv evaluate`` scores a whole split
with ``pycocotools`` (mAP@[.5:.95], AP50, AP75, AP small / medium / large).
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import models
from ..config import from_dict
from ..data import prepared
from ..data.detection import coco_file, read_split
from ..data.images import channel_stats, read_meta, to_pixels
from ..files import atomic_write_text
from ..inference.detect import detections, draw_detections
from .base import EpochShuffle, Option, Task, device_of

COCO_STATS = ("map", "map50", "map75", "map_small", "map_medium", "map_large")


@dataclass
class DetectionDataConfig:
    name: str = "mnist-detection"  # a detection data set prepared by `qkv data get`
    scale: float = 0.2             # random zoom by a factor in [1 - scale, 1 + scale]; 0 = off
    flip: bool = False             # random horizontal flips (clothes yes, digits no)
    dir: str = ""                  # data root; "" = $QKV_DATA or ~/.cache/qkv

    def __post_init__(self):
        if not 0 <= self.scale < 1:
            raise ValueError(f"data.scale must be in [0, 1), got {self.scale}")


def to_targets(boxes: list[np.ndarray], labels: list[np.ndarray], size: int) -> list[dict]:
    """Pixel (x0, y0, x1, y1) boxes -> the models' targets: normalised (cx, cy, w, h)."""
    out = []
    for b, l in zip(boxes, labels):
        b = torch.from_numpy(np.asarray(b, np.float32).reshape(-1, 4)) / size
        cxcywh = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], -1)
        out.append({"class_labels": torch.from_numpy(np.asarray(l, np.int64)), "boxes": cxcywh})
    return out


def augment(images: np.ndarray, boxes: list[np.ndarray], labels: list[np.ndarray], data: DetectionDataConfig,
            rng: np.random.Generator):
    """Random zoom and flips of uint8 canvases (N, H, W), their pixel boxes moved along."""
    n, h, w = images.shape
    out_images, out_boxes, out_labels = images.copy(), [], []
    for i in range(n):
        img, b, l = torch.from_numpy(images[i]).float()[None, None], boxes[i].astype(np.float32), labels[i]
        if data.scale:
            s = float(rng.uniform(1 - data.scale, 1 + data.scale))
            sh, sw = max(1, round(h * s)), max(1, round(w * s))
            img = F.interpolate(img, size=(sh, sw), mode="bilinear", align_corners=False)
            b = b * np.array([sw / w, sh / h, sw / w, sh / h], np.float32)
            # place the zoomed canvas at a random offset (negative: cropped), then cut the frame
            dy, dx = int(rng.integers(min(0, h - sh), max(0, h - sh) + 1)), int(rng.integers(min(0, w - sw), max(0, w - sw) + 1))
            frame = torch.zeros(1, 1, h, w)
            ys, xs = slice(max(dy, 0), min(dy + sh, h)), slice(max(dx, 0), min(dx + sw, w))
            frame[..., ys, xs] = img[..., ys.start - dy:ys.stop - dy, xs.start - dx:xs.stop - dx]
            img, b = frame, b + np.array([dx, dy, dx, dy], np.float32)
            clipped = np.clip(b, 0, [w, h, w, h]).astype(np.float32)
            area = lambda x: (x[:, 2] - x[:, 0]).clip(0) * (x[:, 3] - x[:, 1]).clip(0)  # noqa: E731
            keep = area(clipped) > 0.5 * area(b)
            b, l = clipped[keep], l[keep]
        if data.flip and rng.random() < 0.5:
            img, b = img.flip(-1), np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], -1).reshape(-1, 4)
        out_images[i] = img[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()
        out_boxes.append(b)
        out_labels.append(l)
    return out_images, out_boxes, out_labels


def coco_eval(coco_path: Path, results: list[dict], image_ids: list[int]) -> dict[str, float]:
    """pycocotools' bbox evaluation of ``results`` on the images ``image_ids`` of a COCO file."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return dict.fromkeys(COCO_STATS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
        truth = COCO(str(coco_path))
        run = COCOeval(truth, truth.loadRes(results), "bbox")
        run.params.imgIds = list(image_ids)
        run.evaluate()
        run.accumulate()
        run.summarize()
    # COCOeval's stats: -1 where a size range has no objects at all
    return {k: (float(v) if v >= 0 else float("nan")) for k, v in zip(COCO_STATS, run.stats[:6])}


def coco_results(found: list[dict], image_ids: list[int], size: tuple[int, int]) -> list[dict]:
    """Detections (normalised x0, y0, x1, y1) -> COCO's result records (pixel x, y, w, h)."""
    h, w = size
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    rows = []
    for image_id, d in zip(image_ids, found):
        for score, label, box in zip(d["scores"].tolist(), d["labels"].tolist(), (d["boxes"] * scale).tolist()):
            rows.append({"image_id": int(image_id), "category_id": int(label), "score": round(score, 5),
                         "bbox": [round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2), round(box[3] - box[1], 2)]})
    return rows


class DetectionTask(Task):
    name = "detection"
    data_config = DetectionDataConfig
    tokens_per_sample = 1  # the Trainer's tokens_per_s is images per second
    options = (Option("pictures", int, 8, "canvases drawn with their detections (PNG)"),)

    def __init__(self, run, model, tokenizer=None):  # no tokenizer: the preprocessing is in config.json
        super().__init__(run, model, tokenizer)
        self.folder = prepared(self.data.name, self.data.dir or None)

    @classmethod
    def build(cls, run, run_dir: Path):
        data = from_dict(DetectionDataConfig, run.data, where="data")
        folder = prepared(data.name, data.dir or None)
        meta = read_meta(folder)
        mean, std = channel_stats(read_split(folder, "train")[0][:2000])
        fixed = {"num_channels": meta["channels"], "num_labels": len(meta["labels"])}
        derived = {"image_size": meta["image_size"][0], "class_names": meta["labels"],
                   "image_mean": mean, "image_std": std}
        model = models.from_section(run.model, "object_detector", default="detr-96-small", data=derived, fixed=fixed)
        return model, None

    def prepare_training(self) -> None:
        self.images, targets = read_split(self.folder, "train")
        self.boxes, self.labels = [t["boxes"] for t in targets], [t["labels"] for t in targets]
        self.shuffle = EpochShuffle(len(self.images), self.run.seed)
        n_val = self.run.train.eval_batches * self.run.train.batch_size
        images, targets = read_split(self.folder, "val")
        self.val = (images[:n_val], targets[:n_val])

    def batches(self, first: int, count: int):
        index = self.shuffle(first, count)
        images, boxes, labels = augment(self.images[index], [self.boxes[i] for i in index],
                                        [self.labels[i] for i in index], self.data,
                                        np.random.default_rng([self.run.seed, first]))
        return to_pixels(images, *self.model.config.mean_std), to_targets(boxes, labels, images.shape[-1])

    def loss(self, model, batch) -> torch.Tensor:
        x, targets = batch
        device = device_of(model)
        return model(x, labels=[{k: v.to(device) for k, v in t.items()} for t in targets])["loss"]

    @torch.no_grad()
    def _score(self, model, images: np.ndarray, targets: list[dict], batch: int = 64):
        """(loss per image, detections) of a set of canvases, in eval mode."""
        device, c = device_of(model), model.config
        total, found = 0.0, []
        for i in range(0, len(images), batch):
            x = to_pixels(images[i:i + batch], *c.mean_std).to(device)
            part = to_targets([t["boxes"] for t in targets[i:i + batch]], [t["labels"] for t in targets[i:i + batch]],
                              images.shape[-1])
            out = model(x, labels=[{k: v.to(device) for k, v in t.items()} for t in part])
            total += out["loss"].item() * len(x)
            found += [{k: v.cpu() for k, v in d.items()} for d in detections(model, out)]
        return total / max(1, len(images)), found

    def validate(self, model) -> dict[str, float]:
        images, targets = self.val
        loss, found = self._score(model, images, targets)
        stats = coco_eval(coco_file(self.folder, "val"), coco_results(found, range(len(images)), images.shape[1:]),
                          range(len(images)))
        return {"val_loss": loss, "val_map": stats["map"], "val_map50": stats["map50"]}

    def inputs(self, split: str, count: int) -> torch.Tensor:
        images, _ = read_split(self.folder, split)
        return to_pixels(images[:count], *self.model.config.mean_std)

    def evaluate(self, model, split: str, out: Path, pictures: int = 8) -> dict:
        """COCO mAP of a whole split (pycocotools); writes the detections (COCO results JSON)
        and the first ``pictures`` canvases with their detections drawn."""
        images, targets = read_split(self.folder, split)
        loss, found = self._score(model, images, targets)
        results = coco_results(found, range(len(images)), images.shape[1:])
        stats = coco_eval(coco_file(self.folder, split), results, range(len(images)))
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "detections.json", json.dumps(results) + "\n")
        names = model.config.label_names
        for i in range(min(pictures, len(images))):
            draw_detections(images[i], found[i], names, out / f"{split}-{i:04d}.png", truth=targets[i])
        return {**stats, "loss": loss, "images": len(images), "detections": str(out / "detections.json")}
