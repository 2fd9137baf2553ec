"""DETR, the DEtection TRansformer (Carion et al., 2020, "End-to-End Object Detection with Transformers").

Detection as direct set prediction (Section 3.2, Figure 2):

- Backbone: a CNN, here qkv's ResNet without its head; its last stage gives C channels on
  an h x w grid (stride 32 for ResNet-50). A 1x1 convolution reduces C to d, and the grid
  is flattened to h*w tokens.
- Encoder: post-LN Transformer layers (``qkv.nn.Block``). Fixed 2-D sine positions
  (``qkv.nn.sine_positions_2d``, Appendix A.3) are added to the queries and keys of every
  layer's attention, never to the values.
- Decoder: N learned object queries (``query_position_embeddings``) decode N objects in
  parallel (no causal mask). The target starts at zero; the query embeddings are added to
  the queries and keys of self-attention and to the queries of cross-attention in every
  layer, the encoder's positions to the cross-attention keys. Every layer's output goes
  through one shared LayerNorm and the same heads, giving the auxiliary predictions.
- Heads ("FFNs"): a linear class head over num_labels + 1 classes (the last is "no
  object") and a 3-layer MLP with a sigmoid giving normalised (cx, cy, w, h).
- Loss: Hungarian matching and the set loss, after every decoder layer
  (``qkv/models/detection.py``, Section 3.1).

Padded batches: ``pixel_mask`` (batch, height, width), 1 on real pixels, is shrunk to the
feature grid (nearest); padded cells are never attended to and positions count real cells.
Names follow Hugging Face's ``DetrForObjectDetection``, so ``qkv/interop/detr.py`` is a
rename table (plus joining Q/K/V). Cross-attention maps, (batch, heads, queries, h*w), are
captured as any attention (``qkv.nn.capture(model, "*crossattention")``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import from_dict
from ..nn import ACTIVATIONS, Block, sine_positions_2d
from .detection import MLP, SetCriterion
from .images import ImageConfig, check_pixels
from .resnet import ResNet, ResNetConfig

# The backbone is a qkv ResNetConfig's architecture fields; its image fields are DETR's own.
BACKBONE_FIELDS = ("embedding_size", "hidden_sizes", "depths", "layer_type", "hidden_act",
                   "downsample_in_first_stage", "downsample_in_bottleneck", "stem")
RESNET_50 = dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3], layer_type="bottleneck")


class ResNetBackbone:
    """A detector config's ``backbone``: a table of BACKBONE_FIELDS, beside its own ``image_size``
    and ``num_channels`` (DETR's and Deformable DETR's)."""

    def backbone_config(self) -> ResNetConfig:
        """The backbone's ResNetConfig (its fields type-checked): no head, the detector's image size and channels."""
        unknown = sorted(set(self.backbone) - set(BACKBONE_FIELDS))
        if unknown:
            raise ValueError(f"backbone has unknown key(s) {', '.join(unknown)}; valid: {', '.join(BACKBONE_FIELDS)} "
                             "(image_size, num_channels and labels are the detector's own)")
        return from_dict(ResNetConfig, {**self.backbone, "image_size": self.image_size,
                                        "num_channels": self.num_channels, "num_labels": 0}, where="backbone")

    def write_backbone_out(self) -> ResNetConfig:
        """Check ``backbone`` and write every field of it out, so that config.json says it all."""
        resnet = self.backbone_config()
        self.backbone = {k: getattr(resnet, k) for k in BACKBONE_FIELDS}
        return resnet


@dataclass
class DETRConfig(ResNetBackbone, ImageConfig):
    image_size: int = 800           # the side images are trained at (any size >= the backbone's stride runs)
    num_channels: int = 3           # 1 = grey, 3 = RGB
    backbone: dict = field(default_factory=lambda: dict(RESNET_50))  # qkv ResNetConfig fields (BACKBONE_FIELDS)
    freeze_backbone_bn: bool = False  # batch norm keeps its statistics and affine fixed (DETR's FrozenBatchNorm2d)
    d_model: int = 256
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    num_queries: int = 100          # N: the most objects one image can have
    activation_function: str = "relu"
    dropout: float = 0.1            # on attention weights, sub-layer outputs and FFN outputs
    num_labels: int = 91            # object classes; the class head adds one: "no object"
    auxiliary_loss: bool = True     # the loss after every decoder layer, not only the last
    class_cost: float = 1.0         # matching: cost weights (Section 3.1, Eq. 1)
    bbox_cost: float = 5.0
    giou_cost: float = 2.0
    bbox_loss_coefficient: float = 5.0  # loss: lambda_L1 and lambda_iou (the class term weighs 1)
    giou_loss_coefficient: float = 2.0
    eos_coefficient: float = 0.1    # weight of the "no object" class in the cross-entropy
    class_names: list[str] = field(default_factory=list)   # one per label; [] = "0", "1", ...
    image_mean: list[float] = field(default_factory=list)  # per channel; [] = 0.5 each
    image_std: list[float] = field(default_factory=list)   # per channel; [] = 0.5 each

    def __post_init__(self):
        for name in ("image_size", "num_channels", "d_model", "encoder_layers", "decoder_layers", "num_queries",
                     "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim",
                     "num_labels"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        heads = (self.encoder_attention_heads, self.decoder_attention_heads)
        if self.d_model % 4 or any(self.d_model % h for h in heads):
            raise ValueError(f"d_model={self.d_model} must be a multiple of 4 (2-D sine positions) and of "
                             f"encoder_attention_heads={self.encoder_attention_heads} and "
                             f"decoder_attention_heads={self.decoder_attention_heads}")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function must be one of {sorted(ACTIVATIONS)}, "
                             f"got {self.activation_function!r}")
        costs = (self.class_cost, self.bbox_cost, self.giou_cost)
        if min(costs) < 0 or max(costs) == 0 or not 0 < self.eos_coefficient <= 1:
            raise ValueError(f"the matching costs must be >= 0 and not all 0 (got {costs}), and eos_coefficient in "
                             f"(0, 1] (got {self.eos_coefficient})")
        self.write_backbone_out()
        self.check_image_fields()


PRESETS = {
    # Section 4 (and facebook/detr-resnet-50): ResNet-50, d = 256, 6 + 6 layers, 8 heads, FFN 2048, 100 queries, COCO
    "detr-resnet-50": dict(image_size=800, num_channels=3, num_labels=91, backbone=RESNET_50,
                           image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
    # 96x96 grey canvases with 1-6 objects of 10 classes: a 0.36M-parameter ResNet (7x7 stem: cheap stride 4,
    # and a Hugging Face twin) ending at stride 16, so the encoder sees 6x6 tokens; 20 queries; no dropout
    "detr-96-small": dict(image_size=96, num_channels=1, num_labels=10,
                          backbone=dict(embedding_size=16, hidden_sizes=[16, 64, 128], depths=[1, 2, 1],
                                        layer_type="basic", stem="7x7"),
                          d_model=128, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                          decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512, num_queries=20,
                          dropout=0.0),
}


class DETR(nn.Module):
    config_class = DETRConfig
    model_type = "detr"
    role = "object_detector"
    presets = PRESETS

    def __init__(self, config: DETRConfig):
        super().__init__()
        self.config = c = config
        self.backbone = ResNet(c.backbone_config())
        self.input_projection = nn.Conv2d(c.backbone["hidden_sizes"][-1], c.d_model, kernel_size=1)
        self.query_position_embeddings = nn.Embedding(c.num_queries, c.d_model)
        self.encoder, self.decoder = nn.Module(), nn.Module()
        self.encoder.layers = nn.ModuleList(
            Block(c.d_model, c.encoder_attention_heads, c.encoder_ffn_dim, norm_first=False,
                  act=c.activation_function, dropout=c.dropout) for _ in range(c.encoder_layers))
        self.decoder.layers = nn.ModuleList(
            Block(c.d_model, c.decoder_attention_heads, c.decoder_ffn_dim, cross_attention=True, norm_first=False,
                  act=c.activation_function, dropout=c.dropout) for _ in range(c.decoder_layers))
        self.decoder.layernorm = nn.LayerNorm(c.d_model)  # shared by every layer's output
        self.class_labels_classifier = nn.Linear(c.d_model, c.num_labels + 1)
        self.bbox_predictor = MLP(c.d_model, c.d_model, 4, 3)
        self.criterion = SetCriterion(c.num_labels, class_cost=c.class_cost, bbox_cost=c.bbox_cost,
                                      giou_cost=c.giou_cost, bbox_loss_coefficient=c.bbox_loss_coefficient,
                                      giou_loss_coefficient=c.giou_loss_coefficient, eos_coefficient=c.eos_coefficient)
        for p in [*self.encoder.parameters(), *self.decoder.parameters()]:  # as the authors' Transformer
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        if c.freeze_backbone_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.requires_grad_(False)

    def train(self, mode: bool = True) -> "DETR":
        super().train(mode)
        if self.config.freeze_backbone_bn:  # frozen batch norm: always its running statistics
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def check_input(self, pixel_values: Tensor, pixel_mask: Tensor | None) -> None:
        c, stride = self.config, self.backbone.config.stride
        h, w = check_pixels(pixel_values, c)
        if min(h, w) < stride:
            raise ValueError(f"image size {h}x{w} is too small: the backbone downsamples by {stride}, so DETR needs at "
                             f"least {stride}x{stride} (it was trained at {c.image_size}x{c.image_size})")
        if pixel_mask is not None and tuple(pixel_mask.shape) != (pixel_values.size(0), h, w):
            raise ValueError(f"pixel_mask must be (batch, height, width) = {(pixel_values.size(0), h, w)} like "
                             f"pixel_values, got {tuple(pixel_mask.shape)}")

    def forward_features(self, pixel_values: Tensor, pixel_mask: Tensor | None = None
                         ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The encoder's output (batch, h*w, d_model), the grid's 2-D positions (batch, h*w,
        d_model) and the key mask (batch, 1, 1, h*w), True on real cells (None: all real)."""
        self.check_input(pixel_values, pixel_mask)
        features = self.backbone.forward_stages(pixel_values)[-1]             # (B, C, h, w)
        b, _, h, w = features.shape
        if pixel_mask is None:
            cells, keys = features.new_ones(b, h, w, dtype=torch.bool), None
        else:  # the mask shrunk to the grid (nearest), as the authors' code
            cells = F.interpolate(pixel_mask[None].float(), size=(h, w)).bool()[0]
            if not cells.flatten(1).any(1).all():
                raise ValueError(f"pixel_mask leaves an image no real cell on the {h}x{w} feature grid; its real "
                                 f"part must span at least {self.backbone.config.stride} pixels")
            keys = cells.flatten(1)[:, None, None, :]
        pos = sine_positions_2d(cells, self.config.d_model).flatten(2).transpose(1, 2).to(features.dtype)
        x = self.input_projection(features).flatten(2).transpose(1, 2)
        for layer in self.encoder.layers:
            x, _ = layer(x, keys, pos=pos)
        return x, pos, keys

    def decode(self, memory: Tensor, pos: Tensor, keys: Tensor | None) -> Tensor:
        """Every decoder layer's output through the shared LayerNorm: (layers, batch, queries, d_model)."""
        query_pos = self.query_position_embeddings.weight[None]
        x, outputs = torch.zeros(memory.size(0), *query_pos.shape[1:], device=memory.device, dtype=memory.dtype), []
        for layer in self.decoder.layers:
            x, _ = layer(x, pos=query_pos, context=memory, context_mask=keys, context_pos=pos)
            outputs.append(self.decoder.layernorm(x))
        return torch.stack(outputs)

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor | None = None, *,
                labels: list[dict] | None = None) -> dict:
        """pixel_values (batch, channels, height, width); pixel_mask (batch, height, width), 1 on
        real pixels. Returns ``logits`` (batch, queries, num_labels + 1), ``pred_boxes`` (batch,
        queries, 4) as normalised (cx, cy, w, h), ``aux`` (the same for each earlier decoder
        layer); with ``labels`` (one dict per image: ``class_labels`` (k,), ``boxes`` (k, 4))
        also ``loss``, its last-layer terms ``loss_ce``, ``loss_bbox``, ``loss_giou``, the
        logged ``cardinality_error``, and each earlier layer's terms in its ``aux`` dict."""
        hidden = self.decode(*self.forward_features(pixel_values, pixel_mask))
        logits, boxes = self.class_labels_classifier(hidden), self.bbox_predictor(hidden).sigmoid()
        out = {"logits": logits[-1], "pred_boxes": boxes[-1],
               "aux": [{"logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]}
        if labels is not None:
            losses = self.criterion(out, labels, auxiliary_loss=self.config.auxiliary_loss)
            for layer, terms in zip(out["aux"], losses.pop("aux")):
                layer.update(terms)
            out.update(losses)
        return out
