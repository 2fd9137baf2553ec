"""What the DETR family shares: the box head, the Hungarian matcher and the set-prediction loss.

Carion et al. (2020), "End-to-End Object Detection with Transformers", Section 3.1. A
detector predicts a fixed-size set of N (class, box) pairs; the ground truth, k <= N
objects, is padded with "no object" (the empty class, the last logit).

- Eq. (1), the matching: the permutation sigma of the N predictions that minimises
  sum_i L_match(y_i, y^_sigma(i)), with L_match = -p^_sigma(i)(c_i) + L_box(b_i, b^_sigma(i))
  for each real object i; found per image by the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment``), without gradient.
- Eq. (2), the Hungarian loss over that matching: cross-entropy over all N predictions
  (the unmatched ones target "no object", whose term is weighted ``eos_coefficient`` =
  0.1 "to account for class imbalance"), plus L_box over the matched pairs.
- L_box = lambda_L1 |b - b^|_1 + lambda_iou (1 - GIoU(b, b^)) (Section 3.1 and Appendix A.2;
  lambda_L1 = 5, lambda_iou = 2), summed and divided by the number of objects in the batch.
- Section 3.2, auxiliary decoding losses: the same loss on every decoder layer's
  predictions, each layer matched on its own.

Labels follow Hugging Face's format: one dict per image, ``class_labels`` (k,) and
``boxes`` (k, 4) as normalised (cx, cy, w, h).

A variant (Deformable DETR's sigmoid focal loss) subclasses ``SetCriterion`` and replaces
its two classification methods: ``class_cost_matrix`` (in the matching) and
``loss_labels`` (in the loss); matching, box losses and auxiliary losses stay as they are.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ..nn.boxes import box_cxcywh_to_xyxy, generalized_box_iou

Match = tuple[Tensor, Tensor]  # (prediction indices, target indices) of one image, equally long


class MLP(nn.Module):
    """A perceptron of ``layers`` linear layers with ReLU between: DETR's box head (Section 3.2,
    "a 3-layer perceptron with ReLU activation function and hidden dimension d"). Names are
    Hugging Face's ``DetrMLPPredictionHead``'s (``layers.{i}``)."""

    def __init__(self, dim: int, hidden: int, out: int, layers: int = 3):
        super().__init__()
        sizes = [dim] + [hidden] * (layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:] + [out]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def check_labels(labels: list[dict], batch: int, num_labels: int) -> None:
    """Hugging Face's detection labels, or a ValueError that says what is wrong."""
    if not isinstance(labels, (list, tuple)) or len(labels) != batch:
        got = f"a {type(labels).__name__}" + (f" of {len(labels)}" if isinstance(labels, (list, tuple)) else "")
        raise ValueError(f"labels must be a list of {batch} dicts (one per image) with class_labels (k,) and boxes "
                         f"(k, 4), got {got}")
    for i, t in enumerate(labels):
        if not isinstance(t, dict) or not {"class_labels", "boxes"} <= set(t):
            raise ValueError(f"labels[{i}] must be a dict with class_labels (k,) and boxes (k, 4)")
        classes, boxes = t["class_labels"], t["boxes"]
        if boxes.dim() != 2 or boxes.size(1) != 4 or classes.shape != boxes.shape[:1]:
            raise ValueError(f"labels[{i}]: class_labels {tuple(classes.shape)} and boxes {tuple(boxes.shape)} must be "
                             "(k,) and (k, 4) for the same k")
        if len(classes) and (classes.min() < 0 or classes.max() >= num_labels):
            raise ValueError(f"labels[{i}]: class_labels must lie in 0..{num_labels - 1} (num_labels={num_labels}), "
                             f"got {classes.tolist()}")
        if len(boxes) and not ((boxes[:, 2:] >= 0).all() and torch.isfinite(boxes).all()):
            raise ValueError(f"labels[{i}]: boxes must be normalised (cx, cy, w, h) with w, h >= 0")


def softmax_class_cost(logits: Tensor, classes: Tensor) -> Tensor:
    """DETR's class cost in Eq. (1): -p^(c), the softmax probability of each target's class
    (the constant 1 of 1 - p^ dropped). logits (N, C + 1), classes (T,) -> (N, T)."""
    return -logits.softmax(-1)[:, classes]


@torch.no_grad()
def hungarian_match(logits: Tensor, pred_boxes: Tensor, labels: list[dict], *, class_cost: float = 1.0,
                    bbox_cost: float = 5.0, giou_cost: float = 2.0,
                    class_cost_matrix=softmax_class_cost) -> list[Match]:
    """Eq. (1): the one-to-one matching of predictions to targets of least total cost
    class_cost * C_class + bbox_cost * L1 + giou_cost * (-GIoU), per image.

    logits (B, N, C), pred_boxes (B, N, 4) (cx, cy, w, h); labels: one dict per image.
    Returns per image (prediction indices, target indices), min(N, k) long, targets' order
    following the predictions'. A non-finite cost (a broken prediction) is matched last.
    """
    b, n = logits.shape[:2]
    classes = torch.cat([t["class_labels"] for t in labels]).to(logits.device)
    if classes.numel() == 0:  # no objects in the batch: nothing to match
        empty = torch.zeros(0, dtype=torch.long, device=logits.device)
        return [(empty, empty) for _ in labels]
    boxes = torch.cat([t["boxes"] for t in labels]).to(pred_boxes)
    flat = pred_boxes.flatten(0, 1)
    cost = (class_cost * class_cost_matrix(logits.flatten(0, 1), classes)
            + bbox_cost * torch.cdist(flat, boxes, p=1)
            - giou_cost * generalized_box_iou(box_cxcywh_to_xyxy(flat), box_cxcywh_to_xyxy(boxes)))
    big = torch.finfo(cost.dtype).max
    cost = torch.nan_to_num(cost, nan=big, posinf=big, neginf=big).view(b, n, -1).cpu()
    sizes = [len(t["boxes"]) for t in labels]
    matches = []
    for i, c in enumerate(cost.split(sizes, dim=-1)):
        rows, cols = linear_sum_assignment(c[i].numpy())
        matches.append((torch.as_tensor(rows, dtype=torch.long, device=logits.device),
                        torch.as_tensor(cols, dtype=torch.long, device=logits.device)))
    return matches


class SetCriterion:
    """The Hungarian loss (Eq. 2) of a DETR's predictions, with auxiliary losses (Section 3.2).

    Weights are Hugging Face's config names: ``class_cost``, ``bbox_cost``, ``giou_cost`` in
    the matching; 1, ``bbox_loss_coefficient``, ``giou_loss_coefficient`` on the loss terms.
    """
    parts = ("loss_ce", "loss_bbox", "loss_giou")

    def __init__(self, num_labels: int, *, class_cost: float = 1.0, bbox_cost: float = 5.0, giou_cost: float = 2.0,
                 bbox_loss_coefficient: float = 5.0, giou_loss_coefficient: float = 2.0, eos_coefficient: float = 0.1):
        self.num_labels, self.eos_coefficient = num_labels, eos_coefficient
        self.costs = dict(class_cost=class_cost, bbox_cost=bbox_cost, giou_cost=giou_cost)
        self.weights = {"loss_ce": 1.0, "loss_bbox": bbox_loss_coefficient, "loss_giou": giou_loss_coefficient}

    def class_cost_matrix(self, logits: Tensor, classes: Tensor) -> Tensor:
        """The class term of the matching cost, (N, T); see ``softmax_class_cost``."""
        return softmax_class_cost(logits, classes)

    def loss_labels(self, logits: Tensor, labels: list[dict], matches: list[Match], num_boxes: float) -> Tensor:
        """Cross-entropy over every prediction; unmatched ones target "no object" (the last
        class), whose weight is ``eos_coefficient``; the weighted mean over predictions."""
        target = torch.full(logits.shape[:2], self.num_labels, dtype=torch.long, device=logits.device)
        for i, (rows, cols) in enumerate(matches):
            target[i, rows] = labels[i]["class_labels"][cols]
        weight = torch.ones(self.num_labels + 1, device=logits.device, dtype=logits.dtype)
        weight[-1] = self.eos_coefficient
        return F.cross_entropy(logits.transpose(1, 2), target, weight)

    def loss_boxes(self, pred_boxes: Tensor, labels: list[dict], matches: list[Match],
                   num_boxes: float) -> tuple[Tensor, Tensor]:
        """L1 and 1 - GIoU over the matched pairs, each summed and divided by ``num_boxes``."""
        pred = torch.cat([pred_boxes[i, rows] for i, (rows, _) in enumerate(matches)])
        target = torch.cat([labels[i]["boxes"][cols] for i, (_, cols) in enumerate(matches)]).to(pred)
        l1 = F.l1_loss(pred, target, reduction="sum") / num_boxes
        giou = generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target)).diagonal()
        return l1, (1 - giou).sum() / num_boxes

    def layer_losses(self, logits: Tensor, pred_boxes: Tensor, labels: list[dict], num_boxes: float) -> dict:
        """The unweighted loss terms of one layer's predictions, matched on their own."""
        matches = hungarian_match(logits, pred_boxes, labels, **self.costs, class_cost_matrix=self.class_cost_matrix)
        l1, giou = self.loss_boxes(pred_boxes, labels, matches, num_boxes)
        return {"loss_ce": self.loss_labels(logits, labels, matches, num_boxes), "loss_bbox": l1, "loss_giou": giou}

    def __call__(self, outputs: dict, labels: list[dict], *, auxiliary_loss: bool = True) -> dict:
        """outputs: ``logits`` (B, N, C), ``pred_boxes`` (B, N, 4) and ``aux`` (a list of the same
        for the earlier decoder layers). Returns ``loss`` (the weighted sum over the last
        layer and, with ``auxiliary_loss``, every earlier one), the last layer's terms
        (``loss_ce``, ``loss_bbox``, ``loss_giou``), its ``cardinality_error`` (|predicted
        objects - true objects|, averaged over images; logged, no gradient) and ``aux``:
        one dict of terms per earlier layer (empty without ``auxiliary_loss``)."""
        logits = outputs["logits"]
        check_labels(labels, logits.size(0), self.num_labels)
        labels = [{k: t[k].to(logits.device) for k in ("class_labels", "boxes")} for t in labels]
        num_boxes = torch.tensor(float(sum(len(t["class_labels"]) for t in labels)), device=logits.device)
        if dist.is_available() and dist.is_initialized():  # the mean number of objects over the processes
            dist.all_reduce(num_boxes)
            num_boxes = num_boxes / dist.get_world_size()
        num_boxes = max(num_boxes.item(), 1.0)
        layers = [outputs] + (list(outputs.get("aux", [])) if auxiliary_loss else [])
        terms = [self.layer_losses(o["logits"], o["pred_boxes"], labels, num_boxes) for o in layers]
        loss = sum(self.weights[k] * t[k] for t in terms for k in self.parts)
        return {"loss": loss, **terms[0], "cardinality_error": self.cardinality_error(logits, labels), "aux": terms[1:]}

    @torch.no_grad()
    def cardinality_error(self, logits: Tensor, labels: list[dict]) -> Tensor:
        """|number of predictions whose best class is not "no object" - number of objects|,
        averaged over images (a logged figure, not a loss)."""
        predicted = (logits.argmax(-1) != logits.size(-1) - 1).sum(1).float()
        true = torch.tensor([float(len(t["class_labels"])) for t in labels], device=logits.device)
        return (predicted - true).abs().mean()


# --- Deformable DETR's classification: a sigmoid per class and the focal loss -------------------

def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Lin et al. (2017), "Focal Loss for Dense Object Detection", Eq. (5), per element:
    FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t), with p_t = p where the target is 1 and
    1 - p where it is 0, alpha_t likewise alpha or 1 - alpha. Unreduced, like ``targets``."""
    p = logits.sigmoid()
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * (1 - p_t) ** gamma


def focal_class_cost(logits: Tensor, classes: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Deformable DETR's class cost in the matching: the focal loss of calling the target's class
    present minus that of calling it absent. logits (N, C), classes (T,) -> (N, T)."""
    p = logits.sigmoid()[:, classes]
    return alpha * (1 - p) ** gamma * -(p + 1e-8).log() - (1 - alpha) * p ** gamma * -(1 - p + 1e-8).log()


class FocalSetCriterion(SetCriterion):
    """The set loss with Deformable DETR's classification (Zhu et al. 2021, Appendix A.3, and the
    authors' code): ``num_labels`` independent sigmoids, no "no object" class; the focal loss
    summed over every prediction and class and divided by the number of objects, weighted
    ``class_loss_coefficient``; ``focal_class_cost`` in the matching. A prediction counts as
    an object (cardinality) when some class's probability exceeds 0.5."""

    def __init__(self, num_labels: int, *, focal_alpha: float = 0.25, class_loss_coefficient: float = 1.0, **weights):
        super().__init__(num_labels, **weights)
        self.alpha, self.weights["loss_ce"] = focal_alpha, class_loss_coefficient

    def class_cost_matrix(self, logits: Tensor, classes: Tensor) -> Tensor:
        return focal_class_cost(logits, classes, self.alpha)

    def loss_labels(self, logits: Tensor, labels: list[dict], matches: list[Match], num_boxes: float) -> Tensor:
        target = torch.zeros_like(logits)
        for i, (rows, cols) in enumerate(matches):
            target[i, rows, labels[i]["class_labels"][cols].to(logits.device)] = 1.0
        return sigmoid_focal_loss(logits, target, self.alpha).sum() / num_boxes

    @torch.no_grad()
    def cardinality_error(self, logits: Tensor, labels: list[dict]) -> Tensor:
        predicted = (logits.sigmoid().amax(-1) > 0.5).sum(1).float()
        true = torch.tensor([float(len(t["class_labels"])) for t in labels], device=logits.device)
        return (predicted - true).abs().mean()
