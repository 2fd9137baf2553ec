"""``qkv analyze``: each measure on a trained run, written as a PNG and its numbers as JSON
under ``RUN_DIR/analysis`` (or ``--out``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .look import hidden_states, image_maps, query_looks, relative_position_biases, text_maps, translation_maps
from .measures import (MinibatchCKA, attention_rollout, cls_rollout_map, grid_of, mean_attention_distance,
                       position_similarity)
from .pictures import (bias_figure, cka_figure, distance_figure, heads_figure, overlay_figure, positions_figure,
                       queries_figure, save)


def _load(run_dir):
    from ..io import load

    return load(run_dir)


def _pick(items: list, index: int, what: str):
    if not -len(items) <= index < len(items):
        raise ConfigError(f"--{what} {index} is out of range: the model has {len(items)} (0..{len(items) - 1}, "
                          "or negative from the last)")
    return items[index], index % len(items)


def attention(run_dir, out: Path, *, text: str | None = None, src: str | None = None, tgt: str | None = None,
              layer: int = -1, head: int | None = None, kind: str = "cross") -> Path:
    """Token x token attention of one layer (all heads, or one): self-attention over
    ``text``, or for a translation run the cross-attention of ``src`` and its translation."""
    model, tokenizer = _load(run_dir)
    axes = ("key (attended to)", "query")
    if getattr(model, "role", None) == "seq2seq":
        if src is None or text is not None:
            raise ConfigError("a translation run needs --src \"a source sentence\" (and optionally --tgt), "
                              "not --text")
        maps = translation_maps(model, tokenizer, src, tgt, kind)
        axes = {"cross": ("source token", "target token"), "encoder": ("source token (key)", "source token"),
                "decoder": ("target token (key)", "target token")}[kind]
    elif text is None or src is not None or tgt is not None:
        raise ConfigError("give --text \"some text\" to look at (--src and --tgt are for translation runs)")
    else:
        maps = text_maps(model, tokenizer, text)
    weights, layer = _pick(maps.layers, layer, "layer")
    weights = weights[0].float().numpy()
    heads = range(len(weights)) if head is None else [_pick(list(range(len(weights))), head, "head")[1]]
    chosen = weights[list(heads)]
    label = f"{maps.names[layer]} ({len(maps.names)} layers)"
    fig = heads_figure(chosen, maps.queries, maps.keys, label, axes)
    name = f"attention-layer{layer}" + (f"-head{head}" if head is not None else "")
    return save(fig, out, name, {"layer": maps.names[layer], "heads": list(heads), "queries": maps.queries,
                                 "keys": maps.keys, "weights": chosen.round(5).tolist()})


def _image_model(run_dir, measure: str):
    """The run's image model, one that attends globally over a [CLS] token and a square
    grid of patches (a ViT), which rollout, positions and attention distance assume."""
    model, _ = _load(run_dir)
    if getattr(model, "role", None) != "image_classifier":
        raise ConfigError(f"{run_dir} holds a {model.model_type!r} model; {measure} needs an image model")
    if not (hasattr(model.config, "grid") and hasattr(getattr(model, "embeddings", None), "cls_token")):
        raise ConfigError(f"{measure} reads global attention over a [CLS] token and a patch grid (a ViT); a "
                          f"{model.model_type!r} model has none. Its attention maps: qkv.analysis.capture(model)")
    return model


def rollout(run_dir, image: str, out: Path, *, head_fusion: str = "mean", discard_ratio: float = 0.0) -> Path:
    """Attention rollout of one image, the [CLS] row laid over the image."""
    from PIL import Image

    from ..inference.classify import load_image

    model = _image_model(run_dir, "rollout")
    pixels = load_image(image, model.config)
    maps = image_maps(model, pixels)
    result = attention_rollout(maps, head_fusion, discard_ratio)
    heat = cls_rollout_map(result, grid_of(result.size(-1) - 1))[0].numpy()
    c = model.config
    with Image.open(image) as im:
        shown = np.array(im.convert("L" if c.num_channels == 1 else "RGB").resize((c.image_size, c.image_size)))
    fig = overlay_figure(shown, heat, f"rollout ({head_fusion}, discard {discard_ratio})")
    return save(fig, out, f"rollout-{Path(image).stem}", {"image": str(image), "head_fusion": head_fusion,
                                                          "discard_ratio": discard_ratio,
                                                          "cls_rollout": heat.round(6).tolist()})


def positions(run_dir, out: Path) -> Path:
    """Cosine similarity of a ViT's position embeddings (Figure 7, centre)."""
    model = _image_model(run_dir, "positions")
    table = getattr(getattr(model, "embeddings", None), "position_embeddings", None)
    if table is None:
        raise ConfigError(f"a {model.model_type!r} model has no learned absolute position embeddings")
    grid = (model.config.grid, model.config.grid)
    sim = position_similarity(table.detach(), grid)
    return save(positions_figure(sim.numpy()), out, "positions", {"grid": list(grid),
                                                                 "similarity": sim.numpy().round(5).tolist()})


def bias(run_dir, out: Path) -> Path:
    """Each Swin block's relative position bias, per head, as a picture over (dy, dx)."""
    model, _ = _load(run_dir)
    tables = {name: t.numpy() for name, t in relative_position_biases(model).items()}
    return save(bias_figure(tables), out, "relative-position-bias",
                {name: t.round(5).tolist() for name, t in tables.items()})


def _inputs(run_dir, split: str, count: int) -> torch.Tensor:
    from ..tasks import task_class
    from ..train.config import read_run

    task = task_class(read_run(run_dir).task).from_run(run_dir)
    return task.inputs(split, count)


def distance(run_dir, split: str, out: Path, *, count: int = 256, batch: int = 64) -> Path:
    """Mean attention distance per head and layer over ``count`` images of a split."""
    model = _image_model(run_dir, "distance")
    x = _inputs(run_dir, split, count)
    c = model.config
    total = None
    for start in range(0, len(x), batch):
        part = mean_attention_distance(image_maps(model, x[start:start + batch]), (c.grid, c.grid), c.patch_size)
        part = part * len(x[start:start + batch])
        total = part if total is None else total + part
    result = (total / len(x)).numpy()
    return save(distance_figure(result, c.image_size), out, f"distance-{split}",
                {"split": split, "images": len(x), "distance_px": result.round(4).tolist()})


def cka(run_a, run_b, split: str, out: Path, *, count: int = 512, batch: int = 64) -> Path:
    """Layer x layer linear CKA (minibatch, unbiased) of two runs on the same inputs."""
    model_a, _ = _load(run_a)
    model_b, _ = _load(run_b)
    x = _inputs(run_a, split, count)
    acc = None
    for start in range(0, len(x), batch):
        part = x[start:start + batch]
        if len(part) < 4:
            break
        feats_a, feats_b = hidden_states(model_a, part), hidden_states(model_b, part)
        acc = acc or MinibatchCKA(len(feats_a), len(feats_b))
        acc.update(feats_a, feats_b)
    if acc is None:
        raise ConfigError(f"--count {count} gives too few examples; CKA needs batches of at least 4")
    matrix = acc.compute().numpy()
    a, b = Path(run_a).name, Path(run_b).name
    return save(cka_figure(matrix, a, b), out, f"cka-{a}-{b}-{split}",
                {"run_a": str(run_a), "run_b": str(run_b), "split": split, "examples": len(x),
                 "cka": matrix.round(5).tolist()})


def queries(run_dir, image: str, out: Path, *, threshold: float = 0.5) -> Path:
    """What each detected object's query looked at in the last decoder layer (``query_looks``),
    beside the box it predicted."""
    from ..inference.classify import open_image

    model, _ = _load(run_dir)
    if getattr(model, "role", None) != "object_detector":
        raise ConfigError(f"{run_dir} holds a {model.model_type!r} model; queries needs an object detector (DETR, ...)")
    shown = np.array(open_image(image, model.config))
    found, looks = query_looks(model, shown, threshold)
    if not len(found["scores"]):
        raise ConfigError(f"no object in {image} scores {threshold} or more; lower --threshold")
    names = model.config.label_names
    labels = [f"{names[l]} {s:.2f}" for l, s in zip(found["labels"].tolist(), found["scores"].tolist())]
    if "maps" in looks:
        numbers = {"grid": list(looks["maps"].shape[1:]), "maps": looks["maps"].numpy().round(5).tolist()}
        fig = queries_figure(shown, found["boxes"].numpy(), labels, maps=looks["maps"].numpy())
    else:
        numbers = {k: [t.numpy().round(4).tolist() for t in looks[k]] for k in ("points", "weights")}
        fig = queries_figure(shown, found["boxes"].numpy(), labels,
                             points=[(p.numpy(), w.numpy()) for p, w in zip(looks["points"], looks["weights"])])
    return save(fig, out, f"queries-{Path(image).stem}", {"image": str(image), "threshold": threshold,
                                                          "objects": labels, "boxes": found["boxes"].numpy().round(4).tolist(),
                                                          **numbers})
