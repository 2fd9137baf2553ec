"""ViT: the Vision Transformer (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words").

Eq. (1): the image is cut into non-overlapping P x P patches, each flattened and linearly
projected (here a convolution with kernel = stride = P, the same map), a learnable [CLS]
token is prepended and learnable position embeddings E_pos (1 + number of patches) are
added. Eqs. (2)-(3): pre-LN encoder blocks, z' = z + MSA(LN(z)), z = z' + MLP(LN(z')),
with GELU MLPs (``qkv.nn.Block``; attention is not written here). Eq. (4): a final
LayerNorm, then the classification head on the [CLS] output (or, as an option, on the
mean of the patch tokens: global average pooling).

A model trained at one resolution runs at another when asked to
(``interpolate_pos_encoding=True``): its position embeddings are resized bicubically over
the patch grid, [CLS] kept (Section 3.2). Conversion to and from Hugging Face's
``ViTModel`` / ``ViTForImageClassification`` is a table in ``qkv/interop/vit.py``.

The config also carries what inference needs to prepare an image (channels, size,
normalisation mean/std, label names), so a run directory or a saved model is enough for
``qkv classify``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..nn import ACTIVATIONS, Block, interpolate_grid
from .images import ImageClassifier, ImageConfig, check_pixels

POOLS = ("cls", "mean")


@dataclass
class ViTConfig(ImageConfig):
    image_size: int = 224         # height = width the model is trained at
    patch_size: int = 16
    num_channels: int = 3         # 1 = grey, 3 = RGB
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072  # MLP width
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0
    qkv_bias: bool = True
    num_labels: int = 1000        # 0 = no head: logits are the pooled features
    pool: str = "cls"             # cls | mean (global average pooling over the patch tokens)
    pooler: bool = False          # Hugging Face ViTModel's dense + tanh on [CLS] (model.pool())
    class_names: list[str] = field(default_factory=list)   # one per label; [] = "0", "1", ...
    image_mean: list[float] = field(default_factory=list)  # per channel; [] = 0.5 each
    image_std: list[float] = field(default_factory=list)   # per channel; [] = 0.5 each

    def __post_init__(self):
        for name in ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "intermediate_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}; "
                             "choose a patch size that divides the image size")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unknown hidden_act {self.hidden_act!r}; choose one of {sorted(ACTIVATIONS)}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        self.check_image_fields()

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size



_B16 = dict(image_size=224, patch_size=16, num_channels=3, num_labels=1000)
# Table 1 of the paper (Ti and S from DeiT), and small presets for 28x28 grey images.
PRESETS = {
    "vit-ti-16": dict(_B16, hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
    "vit-s-16": dict(_B16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "vit-b-16": dict(_B16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "vit-l-16": dict(_B16, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    # 28x28 grey: patch 7 (16 patches + [CLS]; fast on a CPU) and patch 4 (49 + [CLS])
    "vit-28-tiny": dict(image_size=28, patch_size=7, num_channels=1, num_labels=10, hidden_size=96,
                        num_hidden_layers=4, num_attention_heads=4, intermediate_size=192),
    "vit-28-small": dict(image_size=28, patch_size=4, num_channels=1, num_labels=10, hidden_size=128,
                         num_hidden_layers=6, num_attention_heads=4, intermediate_size=256),
}


class Embeddings(nn.Module):
    """Eq. (1): [x_class; x_p^1 E; ...; x_p^N E] + E_pos (names as Hugging Face's)."""

    def __init__(self, c: ViTConfig):
        super().__init__()
        self.projection = nn.Conv2d(c.num_channels, c.hidden_size, c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + c.grid**2, c.hidden_size))
        self.grid = c.grid

    def forward(self, pixel_values: Tensor) -> Tensor:
        x = self.projection(pixel_values)                   # (B, dim, h, w)
        pos = interpolate_grid(self.position_embeddings, (self.grid, self.grid), tuple(x.shape[-2:]))
        x = x.flatten(2).transpose(1, 2)                    # (B, h*w, dim), row-major patches
        return torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1) + pos


class ViT(ImageClassifier):
    config_class = ViTConfig
    model_type = "vit"
    presets = PRESETS

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = c = config
        self.embeddings = Embeddings(c)
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            Block(c.hidden_size, c.num_attention_heads, c.intermediate_size, norm_first=True,
                  act=c.hidden_act, dropout=c.dropout, eps=c.layer_norm_eps)
            for _ in range(c.num_hidden_layers)
        )
        self.layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.pooler = nn.Linear(c.hidden_size, c.hidden_size) if c.pooler else None
        self.classifier = nn.Linear(c.hidden_size, c.num_labels) if c.num_labels > 0 else nn.Identity()
        self.apply(self._init_weights)
        nn.init.trunc_normal_(self.embeddings.position_embeddings, std=0.02)
        nn.init.trunc_normal_(self.embeddings.cls_token, std=0.02)
        if not c.qkv_bias:  # no bias on Q, K, V (the output projection keeps its bias)
            for block in self.layers:
                block.attn.c_attn.bias.requires_grad_(False).zero_()

    @staticmethod
    def _init_weights(module: nn.Module):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def check_input(self, pixel_values: Tensor, interpolate_pos_encoding: bool = False) -> None:
        c = self.config
        h, w = check_pixels(pixel_values, c)
        if h % c.patch_size or w % c.patch_size:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {c.patch_size}; "
                             f"resize or crop to a multiple of {c.patch_size} (the model was trained "
                             f"at {c.image_size}x{c.image_size})")
        if (h, w) != (c.image_size, c.image_size) and not interpolate_pos_encoding:
            raise ValueError(f"the model was trained on {c.image_size}x{c.image_size} images, got {h}x{w}; "
                             f"resize to {c.image_size}x{c.image_size}, or pass "
                             "interpolate_pos_encoding=True to interpolate its position embeddings")

    def forward_features(self, pixel_values: Tensor, *, attentions: list | None = None,
                         interpolate_pos_encoding: bool = False) -> Tensor:
        """All tokens after the final LayerNorm: (batch, 1 + patches, hidden_size), [CLS] first.

        attentions: pass a list to receive each layer's attention weights (batch, heads,
            tokens, tokens); this switches attention to the eager path.
        interpolate_pos_encoding: accept a resolution other than ``image_size`` (still a
            multiple of the patch size) by resizing the position embeddings bicubically.
        """
        self.check_input(pixel_values, interpolate_pos_encoding)
        x = self.drop(self.embeddings(pixel_values))
        for block in self.layers:
            x, w = block(x, need_weights=attentions is not None)
            if attentions is not None:
                attentions.append(w)
        return self.layernorm(x)

    def forward_head(self, features: Tensor) -> Tensor:
        """Eq. (4): class logits from the [CLS] token (or the mean of the patch tokens)."""
        pooled = features[:, 0] if self.config.pool == "cls" else features[:, 1:].mean(dim=1)
        return self.classifier(pooled)

    def pool(self, features: Tensor) -> Tensor:
        """Hugging Face ViTModel's ``pooler_output``: tanh(dense([CLS])); needs ``pooler=True``."""
        if self.pooler is None:
            raise ValueError("this ViT has no pooler (config.pooler=false)")
        return torch.tanh(self.pooler(features[:, 0]))
