"""Boxes for set-prediction detectors (DETR and its family), in plain torch.

Two layouts: (cx, cy, w, h), the centre and size a DETR predicts, normalised to [0, 1] by
the image size; and (x0, y0, x1, y1), the corners, in which areas and overlaps are computed.
Functions take boxes in their last dimension (..., 4); the pairwise ones take (N, 4) and (M, 4)
and return (N, M). Deformable DETR predicts boxes around reference points in logit space
(``inverse_sigmoid``), starting from pixel centres (``pixel_centres``).

Generalized IoU is Rezatofighi et al. (2019), "Generalized Intersection over Union",
Algorithm 1: GIoU(A, B) = IoU(A, B) - |C \\ (A u B)| / |C|, with C the smallest box that
encloses A and B. It lies in (-1, 1] and, unlike IoU, still says how far apart two boxes are
when they do not overlap, so 1 - GIoU is a box loss with a gradient everywhere (DETR,
Carion et al. 2020, Section 3.1 and Appendix A.2).
"""
from __future__ import annotations

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(x0, y0, x1, y1) -> (cx, cy, w, h)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Areas of (x0, y0, x1, y1) boxes: (...,)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise intersection and union areas of corner boxes a (N, 4) and b (M, 4): (N, M) each."""
    top_left = torch.max(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, box_area(a)[:, None] + box_area(b)[None, :] - inter


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection over union of corner boxes a (N, 4) and b (M, 4): (N, M)."""
    inter, union = _inter_union(a, b)
    return inter / union


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019, Algorithm 1) of corner boxes a (N, 4)
    and b (M, 4): (N, M), each in (-1, 1]. Boxes must have x1 >= x0 and y1 >= y0."""
    inter, union = _inter_union(a, b)
    top_left = torch.min(a[:, None, :2], b[None, :, :2])        # the enclosing box C
    bottom_right = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return inter / union - (enclosing - union) / enclosing


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 - x)) of normalised coordinates x, clamped to [eps, 1 - eps] first: the logits
    a refined box is predicted around (Deformable DETR, Appendix A.3)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def pixel_centres(h: int, w: int, device=None) -> Tensor:
    """(h*w, 2): the (x, y) centre of each pixel of an h x w map, in [0, 1], row-major."""
    y, x = torch.meshgrid((torch.arange(h, device=device) + 0.5) / h, (torch.arange(w, device=device) + 0.5) / w,
                          indexing="ij")
    return torch.stack((x.flatten(), y.flatten()), -1)
