"""The confusion matrix of a classifier as a PNG (matplotlib) and a CSV."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..files import atomic_write
from ..files import atomic_write_text  # noqa: E402


def plot_confusion(matrix: np.ndarray, names: list[str], out_dir: Path, title: str = "") -> Path:
    """Write confusion.png (counts, rows = true class, colour = share of the row) and
    confusion.csv into ``out_dir``; returns the PNG's path."""
    out_dir = Path(out_dir)
    k = len(names)
    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.6 * k))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    png = out_dir / "confusion.png"
    atomic_write(png, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    csv = "true\\predicted," + ",".join(names) + "\n"
    csv += "".join(f"{names[i]}," + ",".join(map(str, row)) + "\n" for i, row in enumerate(matrix))
    atomic_write_text(out_dir / "confusion.csv", csv)
    return png
