"""``qkv classify``: top-k labels of image files, prepared with Pillow as the model's
config says (grey or RGB, size, normalisation)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data.images import to_pixels


def open_image(path: str | Path, config) -> Image.Image:
    """One image file, converted to grey ("L") or RGB as the model's config says, or a
    ValueError that names the problem (missing, not an image, too large to decode safely)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if config.num_channels not in (1, 3):
        raise ValueError(f"the model takes {config.num_channels}-channel images; qkv reads grey or RGB files")
    try:
        with Image.open(path) as image:
            return image.convert("L" if config.num_channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not an image Pillow can read ({type(e).__name__}); give a PNG, JPEG, ...") from e
    except Image.DecompressionBombError as e:  # not an OSError: Pillow refuses to decode it at all
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        count = f"{int(pixels[1]):,} pixels" if pixels else "too many pixels"
        raise ValueError(f"{path} is too large to open safely ({count}, Pillow's limit is "
                         f"{2 * Image.MAX_IMAGE_PIXELS:,}); resize the image first (the model takes "
                         f"{config.image_size}x{config.image_size})") from e


def load_image(path: str | Path, config) -> torch.Tensor:
    """One image file -> normalised (1, channels, size, size) float tensor: converted to
    grey ("L") or RGB, resized (bicubic) to the model's image_size if it differs."""
    image = open_image(path, config)
    size = (config.image_size, config.image_size)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    return to_pixels(np.array(image)[None], *config.mean_std)


@torch.no_grad()
def classify(model, paths: list[str | Path], k: int = 5) -> list[list[tuple[str, float]]]:
    """For each image, its ``k`` most likely labels with their probabilities."""
    if not hasattr(model.config, "num_labels") or model.config.num_labels < 1:
        raise ValueError("this model has no classification head (num_labels=0)")
    x = torch.cat([load_image(p, model.config) for p in paths])
    probs = model(x.to(next(model.parameters()).device)).softmax(-1).cpu()
    top = probs.topk(min(k, probs.size(-1)), dim=-1)
    names = model.config.label_names
    return [[(names[i], float(p)) for p, i in zip(ps.tolist(), ix.tolist())] for ps, ix in zip(*top)]
