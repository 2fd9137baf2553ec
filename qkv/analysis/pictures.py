"""Pictures of what the measures found (matplotlib, PNG), each written with its numbers as
JSON beside it, so a figure can be checked and redrawn."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..files import atomic_write, atomic_write_text  # noqa: E402


def save(fig, out: Path, name: str, numbers: dict) -> Path:
    """Write ``name``.png and ``name``.json into ``out``; returns the PNG's path."""
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{name}.png"
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    atomic_write_text(out / f"{name}.json", json.dumps(numbers, indent=1) + "\n")
    return png


def _grid(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def heads_figure(maps: np.ndarray, queries: list[str], keys: list[str], title: str,
                 axes_names: tuple[str, str] = ("key (attended to)", "query")):
    """A grid of heatmaps, one per head: ``maps`` (heads, queries, keys)."""
    rows, cols = _grid(len(maps))
    size = max(2.5, 0.22 * max(len(queries), len(keys)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False, layout="constrained")
    for h, ax in enumerate(axes.flat):
        ax.axis("off")
        if h >= len(maps):
            continue
        ax.imshow(maps[h], cmap="viridis", vmin=0, vmax=max(float(maps[h].max()), 1e-9))
        ax.set_title(f"head {h}", fontsize=8)
        if len(keys) <= 40:
            ax.axis("on")
            ax.set_xticks(range(len(keys)), [repr(k)[1:-1] for k in keys], rotation=90, fontsize=6)
            ax.set_yticks(range(len(queries)), [repr(q)[1:-1] for q in queries], fontsize=6)
    fig.suptitle(title)
    fig.supxlabel(axes_names[0])
    fig.supylabel(axes_names[1])
    return fig


def overlay_figure(image: np.ndarray, heat: np.ndarray, title: str):
    """The image, and the image under a heatmap (upsampled to its size)."""
    h, w = image.shape[:2]
    reps = (max(1, h // heat.shape[0]), max(1, w // heat.shape[1]))
    big = np.kron(heat / max(float(heat.max()), 1e-12), np.ones(reps))[:h, :w]
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    for ax in axes:
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        ax.axis("off")
    axes[1].imshow(big, cmap="jet", alpha=0.5, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    axes[0].set_title("image", fontsize=9)
    axes[1].set_title(title, fontsize=9)
    return fig


def positions_figure(sim: np.ndarray):
    """The ViT paper's Figure 7 (centre): for each patch position (row, col), the cosine
    similarity of its position embedding with every patch's, as a small grid."""
    rows, cols = sim.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            im = ax.imshow(sim[r, c], cmap="viridis", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(str(r + 1), fontsize=7)
            if r == rows - 1:
                ax.set_xlabel(str(c + 1), fontsize=7)
    fig.supxlabel("input patch column")
    fig.supylabel("input patch row")
    fig.colorbar(im, ax=axes, shrink=0.6, label="cosine similarity")
    return fig


def distance_figure(distance: np.ndarray, image_size: int):
    """Mean attention distance of every head against depth (ViT paper, Figure 7 right)."""
    layers, heads = distance.shape
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for h in range(heads):
        ax.scatter(np.arange(1, layers + 1), distance[:, h], s=14, label=f"head {h}")
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_ylim(0, image_size)
    ax.set_xticks(range(1, layers + 1))
    ax.legend(fontsize=6, ncol=2)
    return fig


def cka_figure(matrix: np.ndarray, name_a: str, name_b: str):
    """Layer x layer CKA heatmap (rows: model A's layers, columns: model B's)."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(matrix, origin="lower", cmap="magma", vmin=0, vmax=1)
    ax.set_ylabel(f"{name_a} layer")
    ax.set_xlabel(f"{name_b} layer")
    fig.colorbar(im, ax=ax, label="linear CKA")
    return fig


def bias_figure(tables: dict[str, np.ndarray]):
    """One row per block, one panel per head: each head's relative position bias over
    (dy, dx), the centre being the query itself."""
    rows, cols = len(tables), max(t.shape[0] for t in tables.values())
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.3), squeeze=False, layout="constrained")
    for r, (name, table) in enumerate(tables.items()):
        side = table.shape[-1]
        for h, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if h >= len(table):
                ax.axis("off")
                continue
            ax.imshow(table[h], cmap="coolwarm", vmin=-abs(table[h]).max(), vmax=abs(table[h]).max(),
                      extent=(-(side // 2) - 0.5, side // 2 + 0.5, side // 2 + 0.5, -(side // 2) - 0.5))
            if r == 0:
                ax.set_title(f"head {h}", fontsize=7)
            if h == 0:
                ax.set_ylabel(name.replace("layers.", "s").replace(".blocks.", " b"), fontsize=6)
    fig.supxlabel("dx (key column - query column)")
    fig.supylabel("block; dy (key row - query row)")
    return fig


def queries_figure(image: np.ndarray, boxes: np.ndarray, labels: list[str], *, maps: np.ndarray | None = None,
                   points: list[tuple[np.ndarray, np.ndarray]] | None = None, most: int = 8):
    """One panel per detected object (at most ``most``): its box (normalised x0, y0, x1, y1)
    on the image, and what its query looked at: a map over the feature grid (``maps``,
    objects x h x w) or sampling points (x, y in [0, 1]) sized by their weights (``points``)."""
    from matplotlib.patches import Rectangle

    h, w = image.shape[:2]
    n = min(len(labels), most)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        if maps is not None:
            ax.imshow(maps[i], cmap="jet", alpha=0.5, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="bilinear")
        if points is not None:
            xy, weight = points[i]
            ax.scatter(xy[:, 0] * w - 0.5, xy[:, 1] * h - 0.5, s=3 + 60 * weight / max(float(weight.max()), 1e-12),
                       c=weight, cmap="autumn_r", alpha=0.8, edgecolors="none")
        x0, y0, x1, y1 = boxes[i] * np.array([w, h, w, h])
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.5))
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(labels[i], fontsize=9)
        ax.axis("off")
    fig.suptitle("cross-attention of each object's query (last decoder layer)" if maps is not None else
                 "sampling points of each object's query (last decoder layer, all levels and heads)", fontsize=9)
    return fig
