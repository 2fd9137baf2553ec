"""``qkv probe``: how much of an image's class each layer of an image GPT holds, read by a
linear probe (Chen et al., 2020, Section 3.4 and Figure 3).

Features of layer l are the paper's: the hidden states after block l, normalised by the norm
that reads them next (block l+1's ln_1, or ln_f after the last block), averaged over the
sequence. A logistic regression on standardised features is fitted on the training split and
scored on the test split, one per layer; a probe on the raw (reduced) pixels is the
baseline. The paper finds the best features in the middle of the network, not at its end.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..nn import capture


@torch.no_grad()
def layer_features(model, inputs: torch.Tensor, batch: int = 200) -> torch.Tensor:
    """(layers, n, n_embd): each block's normalised output, averaged over the positions of
    ``inputs`` (n, N) (the start token and the pixels)."""
    model.eval()
    t = model.transformer
    norms = [block.ln_1 for block in t.h[1:]] + [t.ln_f]
    device = next(model.parameters()).device
    parts = []
    for part in inputs.split(batch):
        with capture(model, attentions=None, hidden="transformer.h.*") as seen:
            model.forward_features(part.to(device))
        hidden = [calls[0] for calls in seen.hidden.values()]
        parts.append(torch.stack([norm(h).mean(1) for norm, h in zip(norms, hidden)]).float().cpu())
    return torch.cat(parts, 1)


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Test accuracy of a multinomial logistic regression on standardised features."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    with warnings.catch_warnings():  # a probe stopped at max_iter is still a probe; its accuracy stands
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(max_iter=1000).fit(scaler.transform(train_x), train_y)
    return float((clf.predict(scaler.transform(test_x)) == test_y).mean())


def probe_figure(accuracy: list[float], pixels: float, chance: float, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(range(1, len(accuracy) + 1))
    fig, ax = plt.subplots(figsize=(5, 3.4), layout="constrained")
    ax.plot(layers, accuracy, "o-", label="features of the layer")
    ax.axhline(pixels, ls="--", color="grey", label="raw pixels")
    ax.axhline(chance, ls=":", color="black", label="majority class")
    ax.set(xlabel="layer (block)", ylabel="linear-probe test accuracy", xticks=layers, ylim=(0, 1), title=title)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def probe_run(path: str | Path, out: str | Path | None = None, *, train_count: int = 10000,
              test_count: int = 2000, device: str = "cpu") -> dict:
    """``qkv probe``: a linear probe per layer of an image_lm run; writes probe.png and
    probe.json under ``out`` (default RUN_DIR/probe) and returns the numbers."""
    from ..inference.complete import check_image_lm
    from ..io import load
    from ..tasks import task_class
    from ..train.config import RUN_CONFIG, read_run
    from .pictures import save

    if train_count < 2 or test_count < 1:
        raise ConfigError(f"--train-count must be at least 2 and --test-count at least 1, got {train_count} "
                          f"and {test_count}")
    if not (Path(path) / RUN_CONFIG).is_file():
        raise ConfigError(f"{path} is not a training run (no {RUN_CONFIG}); qkv probe reads the labelled data "
                          "an image_lm run was trained on")
    run = read_run(path)
    if run.task != "image_lm":
        raise ConfigError(f"{path} is a {run.task!r} run; qkv probe needs an image_lm run")
    model, _ = load(path, device=device)
    check_image_lm(model, path)
    task = task_class(run.task)(run, model)
    (train_tokens, train_y), (test_tokens, test_y) = task.tokens("train", train_count), task.tokens("test", test_count)
    if len(set(train_y.tolist())) < 2:
        raise ConfigError(f"the first {train_count} training images hold one class; raise --train-count")
    feats = [layer_features(model, task.model.training_pair(t.long())[0]).numpy() for t in (train_tokens, test_tokens)]
    accuracy = [probe_accuracy(a, train_y, b, test_y) for a, b in zip(*feats)]
    r = model.config.image_size
    train_px, test_px = (task.images(s, c).flatten(1).float().numpy() for s, c in (("train", train_count),
                                                                                   ("test", test_count)))
    pixels = probe_accuracy(train_px, train_y, test_px, test_y)
    chance = float(np.bincount(test_y).max() / len(test_y))
    numbers = {"run": str(path), "train_images": len(train_y), "test_images": len(test_y),
               "layers": list(range(1, len(accuracy) + 1)), "accuracy": [round(a, 5) for a in accuracy],
               "pixels_accuracy": round(pixels, 5), "majority_class_accuracy": round(chance, 5),
               "best_layer": int(np.argmax(accuracy)) + 1, "resolution": r, "palette": model.config.palette}
    title = f"{Path(path).name}: {len(train_y)} train / {len(test_y)} test images"
    png = save(probe_figure(accuracy, pixels, chance, title), Path(out) if out else Path(path) / "probe", "probe",
               numbers)
    return {**numbers, "png": str(png), "json": str(png.with_suffix(".json"))}
