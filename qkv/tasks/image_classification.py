"""Image classification (``task = "image_classification"``): any image classifier of the
model registry (ViT, Swin and ResNet today) trained on a prepared image data set.

``[data]`` names the data set and the augmentation; ``[model]`` names a model kind
(``type = "vit"``) or a preset (``preset = "vit-28-small"``), any field overriding it.
The image size, channels and number of classes come from the data set (``[model]`` may
not contradict them); the class names and the normalisation (mean and std of the training
images, per channel) too, unless ``[model]`` sets them. They are stored in the model's
config.json, which is all ``qkv classify`` needs.

Augmentation is batched plain torch: random crop after zero padding, horizontal flips
(only where a mirrored image is still of its class: clothes, not digits), and optional
mixup (Zhang et al., 2018) or CutMix (Yun et al., 2019), with label smoothing (Szegedy
et al., 2016) in the loss. Every random draw of a batch comes from a generator seeded by
(run seed, first sample index), so a resumed run sees exactly the same batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import models
from ..config import from_dict
from ..data import prepared
from ..data.images import channel_stats, load_split, read_meta, to_pixels
from ..errors import ConfigError
from .base import EpochShuffle, Task, device_of


@dataclass
class ImageDataConfig:
    name: str = "fashion-mnist"  # a data set prepared by `qkv data get`
    crop_padding: int = 2        # random crop of the original size after padding by this much; 0 = off
    flip: bool = False           # random horizontal flips (not for digits or text)
    mixup: float = 0.0           # Beta(a, a) parameter of mixup; 0 = off
    cutmix: float = 0.0          # Beta(a, a) parameter of CutMix; 0 = off (both on: one per batch, at random)
    label_smoothing: float = 0.0
    train_size: int = 0          # train on this many training images (a subset fixed by the seed); 0 = all
    dir: str = ""                # data root; "" = $QKV_DATA or ~/.cache/qkv

    def __post_init__(self):
        if self.crop_padding < 0 or self.mixup < 0 or self.cutmix < 0 or self.train_size < 0:
            raise ValueError("data.crop_padding, data.mixup, data.cutmix and data.train_size must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"data.label_smoothing must be in [0, 1), got {self.label_smoothing}")


def augment(x: torch.Tensor, y: torch.Tensor, num_labels: int, data: ImageDataConfig, rng) -> tuple:
    """Random crop with zero padding, flips, then mixup or CutMix (soft targets)."""
    b, _, h, w = x.shape
    if data.crop_padding:
        p = data.crop_padding
        padded = F.pad(x, (p, p, p, p))
        dy, dx = (torch.from_numpy(rng.integers(0, 2 * p + 1, b)) for _ in range(2))
        rows, cols = dy[:, None] + torch.arange(h), dx[:, None] + torch.arange(w)
        x = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if data.flip:
        x = torch.where(torch.from_numpy(rng.random(b) < 0.5)[:, None, None, None], x.flip(-1), x)
    kinds = [k for k in ("mixup", "cutmix") if getattr(data, k) > 0]
    if not kinds:
        return x.contiguous(), y
    kind = kinds[rng.integers(len(kinds))]
    lam, perm = float(rng.beta(getattr(data, kind), getattr(data, kind))), torch.from_numpy(rng.permutation(b))
    if kind == "mixup":
        x = lam * x + (1 - lam) * x[perm]
    else:  # paste a box of area (1 - lam) from the partner image; lam becomes the kept area
        bh, bw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        top, left = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        x = x.clone()
        x[:, :, top:top + bh, left:left + bw] = x[perm, :, top:top + bh, left:left + bw]
        lam = 1 - bh * bw / (h * w)
    onehot = F.one_hot(y, num_labels).float()
    return x.contiguous(), lam * onehot + (1 - lam) * onehot[perm]


class ImageClassificationTask(Task):
    name = "image_classification"
    data_config = ImageDataConfig
    tokens_per_sample = 1  # so the Trainer's tokens_per_s is images per second

    def __init__(self, run, model, tokenizer=None):  # images need no tokenizer: preprocessing is in the config
        super().__init__(run, model, tokenizer)
        self.folder = prepared(self.data.name, self.data.dir or None)

    @classmethod
    def build(cls, run, run_dir: Path):
        data = from_dict(ImageDataConfig, run.data, where="data")
        folder = prepared(data.name, data.dir or None)
        meta = read_meta(folder)
        mean, std = channel_stats(load_split(folder, "train")[0])
        fixed = {"image_size": meta["image_size"][0], "num_channels": meta["channels"],
                 "num_labels": len(meta["labels"])}
        derived = {"class_names": meta["labels"], "image_mean": mean, "image_std": std}
        model = models.from_section(run.model, "image_classifier", default="vit", data=derived, fixed=fixed)
        return model, None

    def prepare_training(self) -> None:
        self.images, self.labels = load_split(self.folder, "train")
        if self.data.train_size:  # the first train_size of a permutation fixed by the seed: nested subsets
            if self.data.train_size > len(self.images):
                raise ConfigError(f"data.train_size={self.data.train_size} exceeds the {len(self.images):,} "
                                  f"training images of {self.data.name}; lower it (0 = all)")
            keep = np.sort(np.random.default_rng([self.run.seed, 0]).permutation(len(self.images))[:self.data.train_size])
            self.images, self.labels = self.images[keep], self.labels[keep]
        self.shuffle = EpochShuffle(len(self.images), self.run.seed)
        n_val = self.run.train.eval_batches * self.run.train.batch_size
        val_x, val_y = load_split(self.folder, "val")
        self.val = (to_pixels(val_x[:n_val], *self.model.config.mean_std), torch.from_numpy(val_y[:n_val]))

    def batches(self, first: int, count: int):
        index = self.shuffle(first, count)
        c = self.model.config
        x = to_pixels(self.images[index], *c.mean_std)
        y = torch.from_numpy(self.labels[index])
        return augment(x, y, c.num_labels, self.data, np.random.default_rng([self.run.seed, first]))

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y, label_smoothing=self.data.label_smoothing)

    def validate(self, model) -> dict[str, float]:
        device = device_of(model)
        x, y = self.val
        logits = torch.cat([model(x[i:i + 256].to(device)).float().cpu() for i in range(0, len(x), 256)])
        return {"val_loss": F.cross_entropy(logits, y).item(), "val_acc": (logits.argmax(-1) == y).float().mean().item()}

    def inputs(self, split: str, count: int) -> torch.Tensor:
        images, _ = load_split(self.folder, split)
        return to_pixels(images[:count], *self.model.config.mean_std)

    @torch.no_grad()
    def evaluate(self, model, split: str, out: Path) -> dict:
        """Accuracy on a whole split, and its confusion matrix (printed, and saved as
        confusion.png and confusion.csv under ``out``)."""
        from ..train.plot_confusion import plot_confusion

        images, labels = load_split(self.folder, split)
        c, device = model.config, device_of(model)
        pred = torch.cat([model(to_pixels(images[i:i + 256], *c.mean_std).to(device)).argmax(-1).cpu()
                          for i in range(0, len(images), 256)]).numpy()
        k = c.num_labels
        matrix = np.bincount(labels * k + pred, minlength=k * k).reshape(k, k)
        out.mkdir(parents=True, exist_ok=True)
        png = plot_confusion(matrix, c.label_names, out, title=f"{Path(self.run.out_dir).name}, {split} split")
        width = max(len(n) for n in c.label_names)
        print(f"confusion matrix (rows: true class, columns: predicted), {split} split:")
        print(" " * width + "".join(f"{i:>6d}" for i in range(k)))
        for i, row in enumerate(matrix):
            print(f"{c.label_names[i]:>{width}s}" + "".join(f"{v:6d}" for v in row))
        return {"accuracy": float((pred == labels).mean()), "images": len(labels), "confusion_png": str(png)}
