"""The image-classification task: a ViT trained on a prepared image data set.

``[data]`` names the data set and the augmentation; ``[model]`` is a ViT config
(``type = "vit"``, optionally ``preset = "vit-28-small"``, any field overriding the
preset). The image size, channels, class names and the normalisation (mean and std of
the training images, per channel) come from the data set unless ``[model]`` sets them;
they are stored in the model's config.json, which is all ``qkv classify`` needs.

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

from ..config import ConfigError, from_dict
from ..data import prepared
from ..data.images import load_split, read_meta
from ..io import build_model, load
from ..models.vit import PRESETS
from .config import RunConfig

IMAGE_MODELS = ("vit",)


@dataclass
class ImageDataConfig:
    name: str = "fashion-mnist"  # a data set prepared by `qkv data get`
    crop_padding: int = 2        # random crop of the original size after padding by this much; 0 = off
    flip: bool = False           # random horizontal flips (not for digits or text)
    mixup: float = 0.0           # Beta(a, a) parameter of mixup; 0 = off
    cutmix: float = 0.0          # Beta(a, a) parameter of CutMix; 0 = off (both on: one per batch, at random)
    label_smoothing: float = 0.0
    dir: str = ""                # data root; "" = $QKV_DATA or ~/.cache/qkv

    def __post_init__(self):
        if self.crop_padding < 0 or self.mixup < 0 or self.cutmix < 0:
            raise ValueError("data.crop_padding, data.mixup and data.cutmix must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"data.label_smoothing must be in [0, 1), got {self.label_smoothing}")


def to_pixels(images: np.ndarray | torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> normalised float (N, C, H, W): (x / 255 - mean) / std."""
    x = torch.as_tensor(images)
    x = (x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)).float().div_(255)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


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


class ImageClassificationTask:
    tokenizer = None  # images need none; preprocessing lives in the model's config
    tokens_per_sample = 1  # so the Trainer's tokens_per_s is images per second

    def __init__(self, run: RunConfig, run_dir: Path):
        self.data = data = from_dict(ImageDataConfig, run.data, where="data")
        self.folder = prepared(data.name, data.dir or None)
        meta = read_meta(self.folder)
        images, self.labels = load_split(self.folder, "train")
        cfg = dict(run.model)
        model_type = cfg.pop("type", "vit")
        if model_type not in IMAGE_MODELS:
            raise ConfigError(f"the image_classification task trains an image model ({IMAGE_MODELS}), not {model_type!r}")
        preset = cfg.pop("preset", None)
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"unknown model.preset {preset!r}; choose one of {sorted(PRESETS)}")
        pixels = torch.from_numpy(images).float().div_(255)
        mean = pixels.mean((0, 1, 2)).reshape(-1).tolist()  # per channel (one for grey)
        std = pixels.std((0, 1, 2)).reshape(-1).tolist()
        defaults = {"image_size": meta["image_size"][0], "num_channels": meta["channels"],
                    "num_labels": len(meta["labels"]), "labels": meta["labels"],
                    "image_mean": [round(m, 4) for m in mean], "image_std": [round(s, 4) for s in std]}
        clash = {k: cfg[k] for k in ("image_size", "num_channels", "num_labels") if k in cfg and cfg[k] != defaults[k]}
        if clash:
            raise ConfigError(f"{data.name} has {meta['channels']}-channel {'x'.join(map(str, meta['image_size']))} "
                              f"images in {len(meta['labels'])} classes, but [model] sets "
                              f"{', '.join(f'{k}={v}' for k, v in clash.items())}: remove those keys")
        self.model = build_model({"model_type": model_type, **PRESETS.get(preset, {}), **defaults, **cfg})
        c = self.model.config
        self.images = images
        self.seed = run.seed
        self._orders: dict[int, np.ndarray] = {}
        n_val = run.train.eval_batches * run.train.batch_size
        val_x, val_y = load_split(self.folder, "val")
        self.val = (to_pixels(val_x[:n_val], *c.mean_std), torch.from_numpy(val_y[:n_val]))

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:  # one shuffle per epoch, fixed by the seed
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.images))}
        return self._orders[epoch]

    def batches(self, first: int, count: int):
        n = len(self.images)
        index = np.array([self._order(i // n)[i % n] for i in range(first, first + count)])
        c = self.model.config
        x = to_pixels(self.images[index], *c.mean_std)
        y = torch.from_numpy(self.labels[index])
        return augment(x, y, c.num_labels, self.data, np.random.default_rng([self.seed, first]))

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y, label_smoothing=self.data.label_smoothing)

    def evaluate(self, model) -> dict[str, float]:
        device = next(model.parameters()).device
        x, y = self.val
        logits = torch.cat([model(x[i:i + 256].to(device)).float().cpu() for i in range(0, len(x), 256)])
        return {"val_loss": F.cross_entropy(logits, y).item(), "val_acc": (logits.argmax(-1) == y).float().mean().item()}

    @staticmethod
    def evaluate_run(run_dir: Path, run: RunConfig, split: str, out: Path) -> dict:
        """Accuracy on a whole split, and its confusion matrix (printed, and saved as
        confusion.png and confusion.csv under ``out``)."""
        from .confusion import plot_confusion

        model, _ = load(run_dir)
        data = from_dict(ImageDataConfig, run.data, where="data")
        images, labels = load_split(prepared(data.name, data.dir or None), split)
        c = model.config
        with torch.no_grad():
            pred = torch.cat([model(to_pixels(images[i:i + 256], *c.mean_std)).argmax(-1)
                              for i in range(0, len(images), 256)]).numpy()
        k = c.num_labels
        matrix = np.bincount(labels * k + pred, minlength=k * k).reshape(k, k)
        out.mkdir(parents=True, exist_ok=True)
        png = plot_confusion(matrix, c.label_names, out, title=f"{Path(run_dir).name}, {split} split")
        width = max(len(n) for n in c.label_names)
        print(f"confusion matrix (rows: true class, columns: predicted), {split} split:")
        print(" " * width + "".join(f"{i:>6d}" for i in range(k)))
        for i, row in enumerate(matrix):
            print(f"{c.label_names[i]:>{width}s}" + "".join(f"{v:6d}" for v in row))
        return {"accuracy": float((pred == labels).mean()), "images": len(labels), "confusion_png": str(png)}
