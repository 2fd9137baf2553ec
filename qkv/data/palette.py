"""Grey images as sequences of palette tokens (Chen et al., 2020, "Generative Pretraining
from Pixels", Section 3): images reduced by area averaging, each pixel mapped to the
nearest of k grey levels found by k-means on the training pixels, read in raster order.

1-D k-means is solved exactly here, not by Lloyd's iterations from a random start: the
optimal clusters of points on a line are runs of consecutive values, so dynamic
programming over the histogram of the (at most 256) grey levels finds the partition of
least squared error (Wang & Song, 2011, "Ckmeans.1d.dp"). The result depends on the data
alone, not on a seed, and takes milliseconds for any number of pixels.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError


def downsample(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, H, W) -> uint8 (N, size, size) by area averaging (adaptive average pooling:
    exact means of 2x2 blocks for 28 -> 14, overlapping windows for 28 -> 16), rounded."""
    x = torch.as_tensor(images)
    if x.dim() != 3 or x.dtype != torch.uint8:
        raise DataError(f"grey uint8 images (N, H, W) expected, got {x.dtype} of shape {tuple(x.shape)}")
    if (x.size(1), x.size(2)) == (size, size):
        return x
    if min(x.size(1), x.size(2)) < size:
        raise DataError(f"images of {x.size(1)}x{x.size(2)} pixels cannot be reduced to {size}x{size}")
    chunks = (F.adaptive_avg_pool2d(part[:, None].float(), size)[:, 0] for part in x.split(8192))
    return torch.cat([c.round_().clamp_(0, 255).to(torch.uint8) for c in chunks])


def histogram(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """How many pixels take each grey level 0..255 (int64, 256)."""
    return np.bincount(np.asarray(images, dtype=np.uint8).reshape(-1), minlength=256).astype(np.int64)


def kmeans_1d(counts: np.ndarray, k: int) -> list[float]:
    """The k centres (ascending) that minimise the summed squared distance of the weighted
    grey levels to their nearest centre: ``counts[v]`` pixels of level v."""
    counts = np.asarray(counts, dtype=np.float64)
    levels = np.flatnonzero(counts > 0)
    if not 1 <= k <= len(levels):
        raise DataError(f"k={k} palette entries asked of pixels with {len(levels)} distinct grey levels; "
                        f"choose k between 1 and {len(levels)}")
    w, v = counts[levels], levels.astype(np.float64)
    cw, cwv, cwv2 = (np.concatenate([[0.0], np.cumsum(a)]) for a in (w, w * v, w * v * v))
    n = len(levels)
    i, j = np.triu_indices(n)  # cost[i, j]: levels i..j in one cluster (i <= j)
    cost = np.full((n, n), np.inf)
    s, s1 = cw[j + 1] - cw[i], cwv[j + 1] - cwv[i]
    cost[i, j] = np.maximum(cwv2[j + 1] - cwv2[i] - s1 * s1 / s, 0.0)
    best = cost[0].copy()           # best[j]: levels 0..j in m clusters (here m = 1)
    starts = []                      # starts[m][j]: where the last cluster begins in that optimum
    for _ in range(1, k):
        total = np.concatenate([[np.inf], best[:-1]])[:, None] + cost  # (first level of last cluster, j)
        starts.append(total.argmin(0))
        best = total.min(0)
    bounds, end = [], n - 1
    for start in reversed(starts):
        bounds.append(int(start[end]))
        end = bounds[-1] - 1
    edges = [0, *reversed(bounds), n]
    return [float((cwv[b] - cwv[a]) / (cw[b] - cw[a])) for a, b in zip(edges[:-1], edges[1:])]


def fit_palette(images: np.ndarray | torch.Tensor, k: int, digits: int = 4) -> list[float]:
    """k grey levels (0..255, ascending, rounded to ``digits``) for uint8 images."""
    return [round(c, digits) for c in kmeans_1d(histogram(images), k)]


def check_palette(palette) -> torch.Tensor:
    if not palette:
        raise DataError("this model has no palette (grey levels of its tokens), so pixels cannot be mapped "
                        "to tokens; train one with task = \"image_lm\", or load a Hugging Face ImageGPT "
                        "whose preprocessor_config.json has grey clusters")
    return torch.tensor(palette, dtype=torch.float32)


def to_tokens(images: np.ndarray | torch.Tensor, palette) -> torch.Tensor:
    """uint8 grey images (N, H, W) -> tokens (N, H*W) in raster order: the index of the
    nearest palette entry (the first one on a tie), looked up per grey level."""
    table = check_palette(palette)
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.dim() < 2:
        raise DataError(f"grey uint8 images (N, H, W) expected, got {x.dtype} of shape {tuple(x.shape)}")
    nearest = (torch.arange(256.0)[:, None] - table).abs().argmin(-1)  # grey level -> token
    return nearest[x.flatten(1).long()]


def to_pixels(tokens: torch.Tensor, palette, size: int) -> torch.Tensor:
    """Tokens (N, size*size) -> uint8 grey images (N, size, size): each token's grey level."""
    table = check_palette(palette)
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= len(table)):
        raise DataError(f"tokens outside the palette's 0..{len(table) - 1}")
    return table[tokens].round().clamp(0, 255).to(torch.uint8).view(-1, size, size)
