"""``qkv complete``: an image GPT is shown the top half of an image and samples the bottom
half, pixel by pixel (Chen et al., 2020, Figure 1), through ``qkv.inference.generate``
(and so its KV cache). The originals, the given halves and the completions are drawn as one
PNG grid, with their pixels as JSON beside it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data.palette import downsample, to_pixels, to_tokens
from ..errors import ConfigError
from ..files import atomic_write, atomic_write_text
from .generate import generate


def check_image_lm(model, where) -> None:
    if getattr(model, "role", None) != "image_lm":
        raise ConfigError(f"{where} holds a {getattr(model, 'model_type', type(model).__name__)!r} model, not an "
                          "image GPT; train one with task = \"image_lm\" (configs/igpt-fashion-mnist.toml)")
    if not model.config.palette:
        raise ConfigError(f"{where}: the model has no grey palette to map pixels to tokens (an RGB ImageGPT?); "
                          "qkv complete reads grey image GPTs")


def read_image(path: str | Path, size: int) -> torch.Tensor:
    """One image file -> uint8 grey (size, size): converted to grey, and reduced by area
    averaging (as the training images were) if it is larger. Smaller or non-square images
    are refused: there is no faithful way to make them what the model read."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            grey = np.array(image.convert("L"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path} is not an image Pillow can read ({type(e).__name__}); give a PNG, JPEG, ...") from e
    h, w = grey.shape
    if h != w or h < size:
        raise ValueError(f"{path} is {w}x{h} pixels; the model reads square grey images of {size}x{size} "
                         f"(larger square images are reduced by area averaging): crop or pad it to a square "
                         f"of at least {size}x{size}")
    return downsample(torch.from_numpy(grey)[None], size)[0]


@torch.no_grad()
def complete(model, images: torch.Tensor, *, rows_given: int | None = None, samples: int = 3,
             temperature: float = 1.0, top_k: int | None = None, seed: int | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """uint8 grey images (n, r, r) -> palette tokens (n, samples, r*r): the first
    ``rows_given`` rows (default: the top half) are the image's, the rest sampled."""
    c = model.config
    r = c.image_size
    if images.dim() != 3 or tuple(images.shape[1:]) != (r, r):
        raise ValueError(f"images must be (n, {r}, {r}), got {tuple(images.shape)}")
    if samples < 1:
        raise ValueError(f"samples per image must be at least 1, got {samples}")
    rows = r // 2 if rows_given is None else rows_given
    if not 0 <= rows < r:
        raise ValueError(f"rows given must be in 0..{r - 1}, got {rows}")
    tokens = to_tokens(images, c.palette)
    given = rows * r
    prompt = model.with_start(tokens[:, :given]).repeat_interleave(samples, dim=0)
    out = generate(model, prompt, c.pixels - given, temperature=temperature, top_k=top_k, seed=seed,
                   use_cache=use_cache)
    return out[:, 1:].cpu().view(len(images), samples, c.pixels)


def grid_figure(originals: np.ndarray, given: np.ndarray, completions: np.ndarray, names: list[str], title: str):
    """Rows: images; columns: the original, the given top (the rest blank), the completions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, s = completions.shape[:2]
    cols = 2 + s
    fig, axes = plt.subplots(n, cols, figsize=(1.3 * cols, 1.3 * n + 0.5), squeeze=False, layout="constrained")
    cmap = plt.get_cmap("gray").with_extremes(bad="#c9d6ea")  # the hidden half
    heads = ["original", "given"] + [f"sample {j + 1}" for j in range(s)]
    for i in range(n):
        pictures = [originals[i], given[i], *completions[i]]
        for j, (ax, picture) in enumerate(zip(axes[i], pictures)):
            ax.imshow(picture, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(heads[j], fontsize=8)
        axes[i][0].set_ylabel(names[i], fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def complete_run(path: str | Path, out: str | Path | None = None, *, split: str = "test", n: int = 8,
                 image_files: list[str] | None = None, samples: int = 3, temperature: float = 1.0,
                 top_k: int | None = None, seed: int | None = None, device: str = "cpu") -> Path:
    """``qkv complete``: images of a run's data split (or files), completed; returns the PNG."""
    from ..io import load

    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    if samples < 1:
        raise ConfigError(f"--samples-per-image must be at least 1, got {samples}")
    model, _ = load(path, device=device)
    check_image_lm(model, path)
    c = model.config
    if image_files:
        images = torch.stack([read_image(f, c.image_size) for f in image_files])
        names = [Path(f).name for f in image_files]
    else:
        images = _split_images(path, model, split, n)
        names = [f"{split} #{i}" for i in range(len(images))]
    tokens = complete(model, images, samples=samples, temperature=temperature, top_k=top_k, seed=seed)
    rows = c.image_size // 2
    quantized = to_pixels(to_tokens(images, c.palette), c.palette, c.image_size).numpy()
    given = quantized.astype(float)
    given[:, rows:] = np.nan
    done = to_pixels(tokens.flatten(0, 1), c.palette, c.image_size).view(len(images), samples, c.image_size,
                                                                         c.image_size).numpy()
    out = Path(out) if out else Path(path) / f"complete-{'files' if image_files else split}.png"
    title = (f"{Path(path).name}: top {rows} of {c.image_size} rows given, bottom sampled "
             f"(temperature {temperature}{f', top-k {top_k}' if top_k else ''}, {len(c.palette)} grey levels)")
    fig = grid_figure(quantized, given, done, names, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    import matplotlib.pyplot as plt

    plt.close(fig)
    numbers = {"images": names, "rows_given": rows, "temperature": temperature, "top_k": top_k, "seed": seed,
               "palette": c.palette, "originals": quantized.tolist(), "completions": done.tolist()}
    atomic_write_text(out.with_suffix(".json"), json.dumps(numbers) + "\n")
    return out


def _split_images(path, model, split: str, n: int) -> torch.Tensor:
    """The first ``n`` images of a split of the data an image_lm run was trained on."""
    from ..tasks import task_class
    from ..train.config import RUN_CONFIG, read_run

    if not (Path(path) / RUN_CONFIG).is_file():
        raise ConfigError(f"{path} is a model directory, not a training run: give image files with --image")
    run = read_run(path)
    if run.task != "image_lm":
        raise ConfigError(f"{path} is a {run.task!r} run; qkv complete needs an image_lm run")
    return task_class(run.task)(run, model).images(split, n)
