"""Deformable DETR (Zhu et al., 2021, "Deformable DETR: Deformable Transformers for End-to-End
Object Detection").

DETR (``detr.py``) with its attention over image features replaced by multi-scale
deformable attention (``qkv.nn.deformable``, Section 4.1, Eq. 3): each query attends to a
few points sampled around a reference point on every feature level, so the encoder runs
on several resolutions at once and training converges in far fewer epochs.

- Section 4.1 and Appendix A.2, Figure 4: feature levels from the backbone's later stages
  (C3-C5 of a ResNet) through 1x1 convolutions + GroupNorm(32), and extra levels by 3x3
  stride-2 convolutions; a learned level embedding is added to each level's 2-D sine
  positions (pixel centres, as the authors' code).
- Encoder: post-LN layers whose self-attention is deformable over all levels, each pixel's
  reference point its own centre.
- Decoder: self-attention among the object queries (``qkv.nn.MultiHeadAttention``), then
  deformable cross-attention around a reference point predicted from each query's position
  half (a query embedding is split into position and content, as the authors' code).
  Boxes are predicted relative to the reference point (Appendix A.3).
- Loss: Hungarian matching and the set loss of ``detection.py`` with a sigmoid focal
  classification term (Lin et al. 2017; alpha 0.25, gamma 2) over ``num_labels`` logits,
  no "no object" class, after every decoder layer.
- Section 4.2 / Appendix A.4: iterative bounding box refinement (``with_box_refine``: each
  layer refines the previous layer's boxes, which become the next one's reference boxes;
  heads not shared) and two-stage (``two_stage``: every encoder pixel proposes a box, the
  top ``num_queries`` become the decoder's reference boxes and queries; their class-agnostic
  loss is added).

Batches are unpadded (no ``pixel_mask``). Names follow Hugging Face's
``DeformableDetrForObjectDetection``; ``qkv/interop/deformable_detr.py`` converts. The
sampling points are seen with ``qkv.nn.capture_sampling``, the decoder's self-attention
with ``qkv.nn.capture``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import ACTIVATIONS, DeformableDecoderLayer, DeformableEncoderLayer, MultiScaleDeformableAttention
from ..nn import box_positions, sine_positions_2d
from ..nn.boxes import inverse_sigmoid, pixel_centres
from .detection import MLP, FocalSetCriterion
from .detr import PRESETS as DETR_PRESETS, RESNET_50, ResNetBackbone
from .images import ImageConfig, check_pixels
from .resnet import ResNet


@dataclass
class DeformableDETRConfig(ResNetBackbone, ImageConfig):
    image_size: int = 800           # the side images are trained at (any size the backbone takes runs)
    num_channels: int = 3           # 1 = grey, 3 = RGB
    backbone: dict = field(default_factory=lambda: dict(RESNET_50))  # qkv ResNetConfig fields (BACKBONE_FIELDS)
    backbone_stages: list[int] = field(default_factory=lambda: [1, 2, 3])  # stages giving levels: C3-C5
    num_feature_levels: int = 4     # the backbone's + extra 3x3 stride-2 levels
    d_model: int = 256
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 1024
    decoder_ffn_dim: int = 1024
    encoder_n_points: int = 4       # sampled points per head and level
    decoder_n_points: int = 4
    num_queries: int = 300
    activation_function: str = "relu"
    dropout: float = 0.1
    with_box_refine: bool = False
    two_stage: bool = False         # needs with_box_refine
    num_labels: int = 91            # object classes, one sigmoid each
    auxiliary_loss: bool = True     # the loss after every decoder layer, not only the last
    class_cost: float = 2.0         # matching and loss weights: the authors' (Hugging Face's: 1 and 1)
    bbox_cost: float = 5.0
    giou_cost: float = 2.0
    class_loss_coefficient: float = 2.0
    bbox_loss_coefficient: float = 5.0
    giou_loss_coefficient: float = 2.0
    focal_alpha: float = 0.25
    class_names: list[str] = field(default_factory=list)   # one per label; [] = "0", "1", ...
    image_mean: list[float] = field(default_factory=list)  # per channel; [] = 0.5 each
    image_std: list[float] = field(default_factory=list)   # per channel; [] = 0.5 each

    def __post_init__(self):
        for name in ("image_size", "num_channels", "num_feature_levels", "d_model", "encoder_layers", "decoder_layers",
                     "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim",
                     "encoder_n_points", "decoder_n_points", "num_queries", "num_labels"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if any(self.d_model % n for n in (32, self.encoder_attention_heads, self.decoder_attention_heads)):
            raise ValueError(f"d_model={self.d_model} must be a multiple of 32 (GroupNorm(32) per level) and of "
                             f"encoder_attention_heads={self.encoder_attention_heads} and "
                             f"decoder_attention_heads={self.decoder_attention_heads}")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function must be one of {sorted(ACTIVATIONS)}, "
                             f"got {self.activation_function!r}")
        resnet = self.write_backbone_out()
        stages = self.backbone_stages
        if not stages or stages != sorted(set(stages)) or stages[0] < 0 or stages[-1] >= len(resnet.depths):
            raise ValueError(f"backbone_stages must be increasing indices of the backbone's {len(resnet.depths)} "
                             f"stages, got {stages}")
        if self.num_feature_levels < len(stages):
            raise ValueError(f"num_feature_levels={self.num_feature_levels} is fewer than backbone_stages {stages}")
        if self.two_stage and not self.with_box_refine:
            raise ValueError("two_stage needs with_box_refine = true: its proposals are refined layer by layer")
        self.check_image_fields()


_SMALL = DETR_PRESETS["detr-96-small"]  # the same backbone, width, depth, heads and queries as detr-96-small
PRESETS = {
    # Section 5.1: ResNet-50 (C3-C5 + one extra level), 6 + 6 layers, 8 heads, 4 points, FFN 1024, 300 queries
    "deformable-detr": dict(image_size=800, num_channels=3, num_labels=91, backbone=RESNET_50,
                            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
    # 96x96 grey canvases, 10 classes: levels at strides 8 and 16 from the backbone + 32 (12x12, 6x6, 3x3)
    "deformable-detr-96-small": dict(_SMALL, backbone=dict(_SMALL["backbone"]), backbone_stages=[1, 2],
                                     num_feature_levels=3),
}


class DeformableDETR(nn.Module):
    config_class = DeformableDETRConfig
    model_type = "deformable_detr"
    role = "object_detector"
    presets = PRESETS

    def __init__(self, config: DeformableDETRConfig):
        super().__init__()
        self.config = c = config
        d, widths, stages = c.d_model, c.backbone["hidden_sizes"], c.backbone_stages
        self.backbone = ResNet(c.backbone_config())
        self.input_proj = nn.ModuleList(nn.Sequential(nn.Conv2d(widths[s], d, 1), nn.GroupNorm(32, d)) for s in stages)
        for i in range(c.num_feature_levels - len(stages)):  # extra levels: 3x3 stride-2 convolutions
            self.input_proj.append(nn.Sequential(nn.Conv2d(d if i else widths[stages[-1]], d, 3, 2, 1),
                                                 nn.GroupNorm(32, d)))
        self.level_embed = nn.Parameter(torch.empty(c.num_feature_levels, d))
        self.encoder, self.decoder = nn.Module(), nn.Module()
        levels, act, drop = c.num_feature_levels, c.activation_function, c.dropout
        self.encoder.layers = nn.ModuleList(
            DeformableEncoderLayer(d, c.encoder_attention_heads, levels, c.encoder_n_points, c.encoder_ffn_dim, act, drop)
            for _ in range(c.encoder_layers))
        self.decoder.layers = nn.ModuleList(
            DeformableDecoderLayer(d, c.decoder_attention_heads, levels, c.decoder_n_points, c.decoder_ffn_dim, act, drop)
            for _ in range(c.decoder_layers))
        if c.two_stage:  # proposals from the encoder's pixels, embedded as queries
            self.enc_output, self.enc_output_norm = nn.Linear(d, d), nn.LayerNorm(d)
            self.pos_trans, self.pos_trans_norm = nn.Linear(2 * d, 2 * d), nn.LayerNorm(2 * d)
        else:  # learned queries: position and content halves; reference points from the position
            self.query_position_embeddings = nn.Embedding(c.num_queries, 2 * d)
            self.reference_points = nn.Linear(d, 2)
        n = c.decoder_layers + c.two_stage  # two-stage: one more head pair, for the proposals
        heads = (lambda make: nn.ModuleList(make() for _ in range(n))) if c.with_box_refine else \
            (lambda make: nn.ModuleList([make()] * n))  # without refinement one head serves every layer
        self.class_embed, self.bbox_embed = heads(lambda: nn.Linear(d, c.num_labels)), heads(lambda: MLP(d, d, 4))
        self.criterion = FocalSetCriterion(
            c.num_labels, focal_alpha=c.focal_alpha, class_loss_coefficient=c.class_loss_coefficient,
            class_cost=c.class_cost, bbox_cost=c.bbox_cost, giou_cost=c.giou_cost,
            bbox_loss_coefficient=c.bbox_loss_coefficient, giou_loss_coefficient=c.giou_loss_coefficient)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The authors' initialisation: Xavier for the transformer's matrices and the input
        projections, the deformable attention's own, class prior 0.01, boxes starting at the
        reference point (last box layer zero; a log-size bias of -2 unless two-stage)."""
        transformer = [self.encoder, self.decoder] + [getattr(self, n) for n in ("reference_points", "enc_output",
                                                                                  "pos_trans") if hasattr(self, n)]
        for p in [p for part in transformer for p in part.parameters()] + [proj[0].weight for proj in self.input_proj]:
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()
        for m in [proj[0] for proj in self.input_proj] + [getattr(self, "reference_points", None)]:
            if m is not None:
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.level_embed)
        for head, box in zip(self.class_embed, self.bbox_embed):
            nn.init.constant_(head.bias, -math.log((1 - 0.01) / 0.01))
            nn.init.zeros_(box.layers[-1].weight)
            nn.init.zeros_(box.layers[-1].bias)
        if not self.config.two_stage:
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)

    def check_input(self, pixel_values: Tensor, pixel_mask: Tensor | None = None) -> None:
        c, stride = self.config, self.backbone.config.stride
        h, w = check_pixels(pixel_values, c)
        if pixel_mask is not None and not bool(pixel_mask.bool().all()):
            raise ValueError("this Deformable DETR takes unpadded batches: pixel_mask must be None (or all ones); "
                             "batch images of one size, or run them one by one")
        if min(h, w) < stride:
            raise ValueError(f"image size {h}x{w} is too small: the backbone downsamples by {stride}, so Deformable "
                             f"DETR needs at least {stride}x{stride} (it was trained at {c.image_size}x{c.image_size})")

    def levels(self, pixel_values: Tensor) -> list[Tensor]:
        """The feature levels (B, d_model, h_l, w_l), finest first (Figure 4)."""
        maps, stages = self.backbone.forward_stages(pixel_values), self.config.backbone_stages
        levels = [proj(maps[s]) for proj, s in zip(self.input_proj, stages)]
        for proj in self.input_proj[len(stages):]:
            levels.append(proj(maps[stages[-1]] if len(levels) == len(stages) else levels[-1]))
        return levels

    def encode(self, pixel_values: Tensor) -> tuple[Tensor, list[tuple[int, int]]]:
        """The encoder's output over every level's pixels, flattened (B, S, d_model), and each level's (h, w)."""
        levels = self.levels(pixel_values)
        b, d, shapes = pixel_values.size(0), self.config.d_model, [tuple(x.shape[-2:]) for x in levels]
        x = torch.cat([lvl.flatten(2).transpose(1, 2) for lvl in levels], 1)
        pos = torch.cat([sine_positions_2d(torch.ones(b, h, w, device=x.device), d, offset=-0.5).flatten(2)
                         .transpose(1, 2).to(x.dtype) + self.level_embed[i] for i, (h, w) in enumerate(shapes)], 1)
        ref = torch.cat([pixel_centres(h, w, x.device) for h, w in shapes]).to(x.dtype)[None].expand(b, -1, -1)
        x = F.dropout(x, self.config.dropout, self.training)
        for layer in self.encoder.layers:
            x = layer(x, pos, ref, shapes)
        return x, shapes

    def proposals(self, memory: Tensor, shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor, dict]:
        """Two-stage: each encoder pixel proposes a box around its centre (side 0.05 * 2^level),
        refined by the last head pair; the ``num_queries`` best by their first logit become
        reference boxes, and their sine embedding the queries (position, content)."""
        d, dev = self.config.d_model, memory.device
        if memory.size(1) < self.config.num_queries:
            raise ValueError(f"two-stage needs at least num_queries={self.config.num_queries} encoder pixels to "
                             f"propose from; these images give {memory.size(1)}: use larger images or fewer queries")
        anchors = torch.cat([torch.cat([pixel_centres(h, w, dev), torch.full((h * w, 2), 0.05 * 2 ** i, device=dev)],
                                       -1) for i, (h, w) in enumerate(shapes)]).to(memory.dtype)
        valid = ((anchors > 0.01) & (anchors < 0.99)).all(-1, keepdim=True)
        anchors = torch.log(anchors / (1 - anchors)).masked_fill(~valid, float("inf"))
        query = self.enc_output_norm(self.enc_output(memory.masked_fill(~valid, 0.0)))
        logits, boxes = self.class_embed[-1](query), self.bbox_embed[-1](query) + anchors
        top = torch.topk(logits[..., 0], self.config.num_queries, dim=1).indices
        chosen = torch.gather(boxes, 1, top[..., None].expand(-1, -1, 4)).detach()
        pos, x = self.pos_trans_norm(self.pos_trans(box_positions(chosen, d))).split(d, dim=-1)
        return chosen.sigmoid(), pos, x, {"logits": logits, "pred_boxes": boxes.sigmoid()}

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor | None = None, *,
                labels: list[dict] | None = None) -> dict:
        """pixel_values (batch, channels, height, width) -> ``logits`` (batch, queries, num_labels),
        ``pred_boxes`` (batch, queries, 4) as normalised (cx, cy, w, h), ``aux`` (the same after
        each earlier decoder layer) and, two-stage, ``enc_outputs`` (the proposals). With
        ``labels`` (one dict per image: ``class_labels`` (k,), ``boxes`` (k, 4)) also ``loss``,
        the last layer's ``loss_ce``, ``loss_bbox``, ``loss_giou``, ``cardinality_error``, and
        each earlier layer's (and the proposals') terms in its own dict."""
        self.check_input(pixel_values, pixel_mask)
        memory, shapes = self.encode(pixel_values)
        b, d, c, out = memory.size(0), self.config.d_model, self.config, {}
        if c.two_stage:
            ref, pos, x, out["enc_outputs"] = self.proposals(memory, shapes)
        else:
            pos, x = self.query_position_embeddings.weight[None].expand(b, -1, -1).split(d, dim=-1)
            ref = self.reference_points(pos).sigmoid()
        layers = []
        for i, layer in enumerate(self.decoder.layers):
            x = layer(x, pos, memory, ref, shapes)
            r = inverse_sigmoid(ref)
            boxes = (self.bbox_embed[i](x) + (r if r.size(-1) == 4 else F.pad(r, (0, 2)))).sigmoid()
            layers.append({"logits": self.class_embed[i](x), "pred_boxes": boxes})
            if c.with_box_refine:  # the next layer samples around these boxes (no gradient through them)
                ref = boxes.detach()
        out.update(layers[-1], aux=layers[:-1])
        if labels is not None:
            losses = self.criterion(out, labels, auxiliary_loss=c.auxiliary_loss)
            for layer, terms in zip(out["aux"], losses.pop("aux")):
                layer.update(terms)
            if c.two_stage:  # the proposals' loss: one class, "object"
                enc = self.criterion(out["enc_outputs"], [{**t, "class_labels": torch.zeros_like(t["class_labels"])}
                                                          for t in labels], auxiliary_loss=False)
                enc.pop("aux")
                out["enc_outputs"].update(enc)
                losses["loss"] = losses["loss"] + enc["loss"]
            out.update(losses)
        return out
