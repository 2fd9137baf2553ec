"""Generative pretraining on pixels (``task = "image_lm"``; Chen et al., 2020): an image GPT
learns to predict each pixel of a grey image from the pixels before it in raster order.

``[data]`` names a prepared grey image data set (``fashion-mnist``, ``mnist``), the
resolution the images are reduced to by area averaging (14 -> 196 tokens; 16, 28) and the
number k of palette entries. ``build`` fits the palette (exact 1-D k-means on the grey
levels of the reduced training images, ``qkv.data.palette``) and stores it, the image size
and the vocabulary (k + the start token) in the model's config: ``[model]`` may not
contradict them. ``[model]`` names a model of role ``image_lm`` (``preset =
"igpt-14-small"``, ``type = "igpt"``).

The loss is the mean next-pixel cross-entropy in nats per pixel, over the k palette
tokens; bits per dim is that over ln 2 (one channel: a pixel is a dimension). These are
bits of the palette-token sequence at the reduced resolution, not the 8-bit pixels of the
generative-modelling literature.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import models
from ..config import from_dict
from ..data import prepared
from ..data.images import load_split, read_meta
from ..data.palette import downsample, fit_palette, to_tokens
from ..errors import ConfigError
from .base import EpochShuffle, Task, device_of


@dataclass
class ImageLMDataConfig:
    name: str = "fashion-mnist"  # a grey image data set prepared by `qkv data get`
    resolution: int = 14         # images are reduced to resolution x resolution (area averaging)
    k: int = 8                   # palette entries (grey levels); the vocabulary is k + 1 with the start token
    dir: str = ""                # data root; "" = $QKV_DATA or ~/.cache/qkv

    def __post_init__(self):
        if self.resolution < 1:
            raise ValueError(f"data.resolution must be a positive integer, got {self.resolution}")
        if not 2 <= self.k <= 256:
            raise ValueError(f"data.k must be in 2..256 (palette entries, grey levels), got {self.k}")


def reduced(folder: Path, split: str, resolution: int) -> tuple[torch.Tensor, np.ndarray]:
    """(uint8 images (N, r, r) reduced by area averaging, labels) of one split."""
    images, labels = load_split(folder, split)
    return downsample(images, resolution), labels


class ImageLMTask(Task):
    name = "image_lm"
    data_config = ImageLMDataConfig

    def __init__(self, run, model, tokenizer=None):  # the palette is the tokenizer, kept in the config
        super().__init__(run, model, tokenizer)
        self.folder = prepared(self.data.name, self.data.dir or None)
        self.tokens_per_sample = model.config.pixels  # the Trainer's tokens/s: pixels per second

    @classmethod
    def build(cls, run, run_dir: Path):
        data = from_dict(ImageLMDataConfig, run.data, where="data")
        folder = prepared(data.name, data.dir or None)
        meta = read_meta(folder)
        if meta["channels"] != 1:
            raise ConfigError(f"data set {data.name!r} has {meta['channels']}-channel images; the image_lm task "
                              "models grey images")
        side = min(meta["image_size"])
        if data.resolution > side:
            raise ConfigError(f"data.resolution={data.resolution} exceeds the images' {side}x{side}; "
                              f"choose at most {side} (14, 16 or 28 for 28x28 images)")
        r = data.resolution
        default = f"igpt-{r}-small" if f"igpt-{r}-small" in models.PRESETS else "igpt"
        name = run.model.get("preset") or run.model.get("type") or default
        preset_side = models.resolve(name)[1].get("image_size", r) if isinstance(name, str) else r
        if preset_side != r:
            raise ConfigError(f"model preset {name!r} is for {preset_side}x{preset_side} images but data.resolution="
                              f"{r}; use a preset of that size (igpt-{r}-small) or set data.resolution={preset_side}")
        palette = fit_palette(reduced(folder, "train", r)[0], data.k)
        fixed = {"image_size": r, "block_size": r * r, "vocab_size": data.k + 1, "palette": palette}
        return models.from_section(run.model, "image_lm", default=default, fixed=fixed), None

    # -- data --------------------------------------------------------------------------------
    def tokens(self, split: str, count: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """(palette tokens (N, pixels) as uint8, labels) of the first ``count`` images of a split."""
        images, labels = load_split(self.folder, split)
        images, labels = images[:count], labels[:count]
        c = self.model.config
        return to_tokens(downsample(images, c.image_size), c.palette).to(torch.uint8), labels

    def images(self, split: str, count: int) -> torch.Tensor:
        """The first ``count`` images of a split at the model's resolution, uint8 (N, r, r)."""
        return downsample(load_split(self.folder, split)[0][:count], self.model.config.image_size)

    def prepare_training(self) -> None:
        self.train_tokens = self.tokens("train")[0]
        self.shuffle = EpochShuffle(len(self.train_tokens), self.run.seed)
        n_val = self.run.train.eval_batches * self.run.train.batch_size
        val = self.tokens("val", n_val)[0].long()
        bs = self.run.train.batch_size
        self.val_batches = [self.model.training_pair(val[i:i + bs]) for i in range(0, len(val), bs)]

    def batches(self, first: int, count: int):
        index = self.shuffle(first, count)
        return self.model.training_pair(self.train_tokens[torch.from_numpy(index)].long())

    # -- training ----------------------------------------------------------------------------
    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        return model(x, labels=y)[1]

    def validate(self, model) -> dict[str, float]:
        device = device_of(model)
        total = sum(F.cross_entropy(model(x.to(device)).flatten(0, 1).float(), y.to(device).flatten(),
                                    reduction="sum").item() for x, y in self.val_batches)
        nats = total / sum(y.numel() for _, y in self.val_batches)
        return {"val_loss": nats, "val_bits_per_dim": nats / math.log(2)}

    # -- evaluation and analysis ---------------------------------------------------------------
    def inputs(self, split: str, count: int) -> torch.Tensor:
        return self.model.training_pair(self.tokens(split, count)[0].long())[0]

    @torch.no_grad()
    def evaluate(self, model, split: str, out: Path, batch: int = 256) -> dict:
        """Next-pixel cross-entropy over every pixel of every image of a split."""
        tokens = self.tokens(split)[0]
        device, total = device_of(model), 0.0
        for start in range(0, len(tokens), batch):
            x, y = model.training_pair(tokens[start:start + batch].long())
            total += F.cross_entropy(model(x.to(device)).flatten(0, 1).float(), y.to(device).flatten(),
                                     reduction="sum").item()
        nats = total / tokens.numel()
        return {"nats_per_pixel": nats, "bits_per_dim": nats / math.log(2), "images": len(tokens),
                "pixels": int(tokens.numel())}
