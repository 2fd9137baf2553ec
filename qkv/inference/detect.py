"""``qkv detect``: boxes, labels and scores of an object detector (DETR, Deformable DETR) on
image files, printed and drawn.

A detector answers with one (class, box) pair per object query; ``detections`` turns them
into scored boxes as the papers do: DETR's softmax over the classes and "no object", each
query scored by its best real class (Carion et al. 2020); Deformable DETR's independent
sigmoids, the ``top`` best (query, class) pairs over all queries (Zhu et al. 2021). No
non-maximum suppression: the set loss taught each object to one query.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..nn.boxes import box_cxcywh_to_xyxy

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#9a6324",
           "#800000", "#469990", "#000075"]


def detections(model, outputs: dict, threshold: float = 0.0, top: int = 100) -> list[dict[str, Tensor]]:
    """Per image: ``scores`` (k,), ``labels`` (k,) and ``boxes`` (k, 4) as normalised
    (x0, y0, x1, y1), best first, those scoring at least ``threshold``."""
    logits, boxes = outputs["logits"].float(), box_cxcywh_to_xyxy(outputs["pred_boxes"].float())
    num_labels = model.config.num_labels
    found = []
    for lg, bx in zip(logits, boxes):
        if lg.size(-1) == num_labels + 1:  # softmax with a "no object" class (DETR)
            scores, labels = lg.softmax(-1)[:, :-1].max(-1)
            query = torch.arange(len(lg))
        else:                              # a sigmoid per class (Deformable DETR)
            flat = lg.sigmoid().flatten()
            scores, index = flat.topk(min(top, flat.numel()))
            query, labels = index // num_labels, index % num_labels
        order = scores.argsort(descending=True)[:top]
        order = order[scores[order] >= threshold]
        found.append({"scores": scores[order], "labels": labels[order], "boxes": bx[query[order]].clamp(0, 1),
                      "queries": query[order]})
    return found


def draw_detections(image: np.ndarray, found: dict, names: list[str], path: str | Path, *, truth: dict | None = None,
                    threshold: float = 0.5, scale: int | None = None) -> Path:
    """A PNG of ``image`` (uint8, grey or RGB) with the detections scoring at least
    ``threshold`` (coloured by class, with label and score) and the true boxes (white, thin)."""
    from PIL import Image, ImageDraw

    from ..files import atomic_write

    h, w = image.shape[:2]
    scale = scale or max(1, 384 // max(h, w))
    picture = Image.fromarray(image).convert("RGB").resize((w * scale, h * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(picture)
    if truth is not None:
        for box in np.asarray(truth["boxes"]).reshape(-1, 4):
            draw.rectangle([v * scale for v in box], outline="#ffffff", width=1)
    size = torch.tensor([w, h, w, h], dtype=torch.float32) * scale
    for score, label, box in zip(found["scores"].tolist(), found["labels"].tolist(), (found["boxes"] * size).tolist()):
        if score < threshold:
            continue
        colour = PALETTE[label % len(PALETTE)]
        draw.rectangle(box, outline=colour, width=2)
        draw.text((box[0] + 2, max(0, box[1] - 11)), f"{names[label]} {score:.2f}", fill=colour)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
    return path


@torch.no_grad()
def detect(model, paths: list[str | Path], threshold: float = 0.5) -> list[tuple[np.ndarray, dict]]:
    """Each image file read as the model's config says (grey or RGB, normalised, at its own
    size: the backbone is convolutional) -> (its pixels as read, its detections)."""
    from ..data.images import to_pixels
    from .classify import open_image

    answers = []
    for path in paths:
        shown = np.array(open_image(path, model.config))
        outputs = model(to_pixels(shown[None], *model.config.mean_std).to(next(model.parameters()).device))
        answers.append((shown, {k: v.cpu() for k, v in detections(model, outputs, threshold)[0].items()}))
    return answers
