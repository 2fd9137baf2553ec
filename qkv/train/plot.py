"""``qkv plot``: training curves from ``metrics.jsonl``, several runs on one figure.

Writes ``loss.png`` (training loss, and validation loss dashed), ``lr.png`` and
``throughput.png``, each with one line per run, labelled by the run directory's name.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

from ..errors import CheckpointError  # noqa: E402
from .metrics import read_metrics  # noqa: E402

PANELS = {  # file -> (title, y label, [(metrics key, line style)])
    "loss.png": ("Loss", "loss (nats per token)", [("loss", "-"), ("val_loss", "--")]),
    "lr.png": ("Learning rate", "learning rate", [("lr", "-")]),
    "throughput.png": ("Throughput", "tokens / s", [("tokens_per_s", "-")]),
}


def load_curves(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """{metric: (steps, values)} for every metric the run logged."""
    file = Path(run_dir) / "metrics.jsonl"
    if not file.is_file():
        raise CheckpointError(f"{file} does not exist: is {run_dir} a qkv run directory that has trained?")
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for record in read_metrics(file):
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                steps, values = curves.setdefault(key, ([], []))
                steps.append(record["step"])
                values.append(value)
    return curves


def plot_runs(run_dirs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Draw every panel for all runs into ``out_dir``; returns the files written."""
    runs = {Path(r).name or str(r): load_curves(Path(r)) for r in run_dirs}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]  # one colour per run
    written = []
    for filename, (title, ylabel, series) in PANELS.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (name, curves) in enumerate(runs.items()):
            for key, style in series:
                if key in curves:
                    ax.plot(*curves[key], style, color=colors[i % len(colors)],
                            label=f"{name} {key}" if len(series) > 1 else name)
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(out_dir / filename, dpi=120)
        plt.close(fig)
        written.append(out_dir / filename)
    return written
