"""What every image classifier shares: the config fields inference needs (so a run directory
or a saved model is enough for ``qkv classify``) and the checks on the pixels it is given.

A model subclasses ``ImageClassifier`` and writes ``forward_features`` (its features) and
``forward_head`` (logits from them); a config that mixes in ``ImageConfig`` declares the dataclass fields ``image_size``,
``num_channels``, ``num_labels``, ``class_names``, ``image_mean`` and ``image_std`` and
calls ``check_image_fields()`` from its ``__post_init__``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ImageConfig:
    image_size: int
    num_channels: int
    num_labels: int
    class_names: list[str]
    image_mean: list[float]
    image_std: list[float]

    def check_image_fields(self) -> None:
        if self.class_names and len(self.class_names) != self.num_labels:
            raise ValueError(f"{len(self.class_names)} class_names for num_labels={self.num_labels}")
        for name in ("image_mean", "image_std"):
            if getattr(self, name) and len(getattr(self, name)) != self.num_channels:
                raise ValueError(f"{name} needs one value per channel ({self.num_channels}), got {getattr(self, name)}")

    @property
    def label_names(self) -> list[str]:
        """``class_names``, or the label numbers as text where the config names none."""
        return list(self.class_names) or [str(i) for i in range(self.num_labels)]

    @property
    def mean_std(self) -> tuple[list[float], list[float]]:
        return (list(self.image_mean) or [0.5] * self.num_channels,
                list(self.image_std) or [0.5] * self.num_channels)


def check_pixels(pixel_values: Tensor, config: ImageConfig) -> tuple[int, int]:
    """A float (batch, channels, height, width) tensor with the model's channel count, or a
    ValueError saying what the model expects; returns (height, width)."""
    if pixel_values.dim() != 4 or not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be a float tensor (batch, channels, height, width), got "
                         f"{pixel_values.dtype} of shape {tuple(pixel_values.shape)}")
    _, channels, h, w = pixel_values.shape
    if channels != config.num_channels:
        kind = {1: "grey", 3: "RGB"}.get(config.num_channels, f"{config.num_channels}-channel")
        raise ValueError(f"the model expects {kind} images with {config.num_channels} channel(s), got "
                         f"{channels}; convert the images to {config.num_channels} channel(s)")
    return h, w


class ImageClassifier(nn.Module):
    """The common end of every image classifier: logits (and a loss) from pixels, and the
    Hugging Face twin (when ``qkv.interop`` has a table for the model)."""
    role = "image_classifier"

    def forward(self, pixel_values: Tensor, *, labels: Tensor | None = None, **options):
        """Logits (batch, num_labels); with ``labels`` (batch,) returns (logits, cross-entropy).
        ``options`` go to ``forward_features`` (e.g. a ViT's ``interpolate_pos_encoding``)."""
        logits = self.forward_head(self.forward_features(pixel_values, **options))
        if labels is None:
            return logits
        return logits, F.cross_entropy(logits, labels)

    def save_hf(self, path) -> None:
        """Write the Hugging Face *ForImageClassification (or *Model) directory of this model."""
        from ..interop import save_hf

        save_hf(self, path)
