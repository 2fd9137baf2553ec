"""Swin Transformer (Liu et al., 2021, "Hierarchical Vision Transformer using Shifted Windows").

Section 3.1, Figure 3: the image is cut into P x P patches, projected (a convolution with
kernel = stride = P) and layer-normalised; stages of Swin blocks follow, with patch merging
between them (each 2x2 group of neighbouring tokens concatenated, 4C -> LayerNorm ->
linear -> 2C), so the token grid halves and the width doubles; a final LayerNorm, then
the head on the average of all tokens.

Section 3.2, Eq. (3): a block is pre-LN, z' = (S)W-MSA(LN(z)) + z, z = MLP(LN(z')) + z'.
W-MSA is self-attention inside non-overlapping M x M windows; the next block (SW-MSA)
first rolls the grid by M // 2, so its windows straddle the previous ones, with a mask that
keeps apart the regions the roll brought together (Figure 4). Eq. (4): softmax(Q K^T /
sqrt(d) + B) V, B the relative position bias, a learned (2M-1)^2 x heads table indexed by
the offset between two tokens. Windows, mask and index are ``qkv.nn.windows``; attention
is ``qkv.nn``'s, the window being the sequence.

As in ``transformers``: a grid not divisible by M is padded with zeros (after the
LayerNorm) at the right and bottom; an image not divisible by P likewise; a stage whose
grid is no larger than the window (min(h, w) <= M) uses one window of min(h, w) and no
shift. Smaller windows read the entries of the same table for their offsets (where
``transformers`` fails). Conversion to and from ``SwinModel`` / ``SwinForImageClassification``
is a table in ``qkv/interop/swin.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import ACTIVATIONS, Block, partition, relative_position_index, shifted_window_mask, unpartition
from .images import ImageClassifier, ImageConfig, check_pixels


@dataclass
class SwinConfig(ImageConfig):
    image_size: int = 224          # height = width the model is trained at (others work too)
    patch_size: int = 4
    num_channels: int = 3          # 1 = grey, 3 = RGB
    embed_dim: int = 96            # C, the width of the first stage (doubled by each merge)
    depths: list[int] = field(default_factory=lambda: [2, 2, 6, 2])    # blocks per stage
    num_heads: list[int] = field(default_factory=lambda: [3, 6, 12, 24])
    window_size: int = 7           # M
    mlp_ratio: float = 4.0
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5   # blocks and the final LayerNorm (the others keep 1e-5)
    dropout: float = 0.0
    drop_path_rate: float = 0.0    # stochastic depth, rising linearly to this over the blocks
    qkv_bias: bool = True
    num_labels: int = 1000         # 0 = no head: logits are the pooled features
    class_names: list[str] = field(default_factory=list)   # one per label; [] = "0", "1", ...
    image_mean: list[float] = field(default_factory=list)  # per channel; [] = 0.5 each
    image_std: list[float] = field(default_factory=list)   # per channel; [] = 0.5 each

    def __post_init__(self):
        self.depths, self.num_heads = list(self.depths), list(self.num_heads)  # copies: presets stay as they are
        for name in ("image_size", "patch_size", "num_channels", "embed_dim", "window_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.depths or len(self.depths) != len(self.num_heads) or min(self.depths + self.num_heads) < 1:
            raise ValueError(f"depths and num_heads need one positive entry per stage, got depths={self.depths}, "
                             f"num_heads={self.num_heads}")
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim << i) % heads:
                raise ValueError(f"stage {i} is {self.embed_dim << i} wide, not divisible by num_heads[{i}]={heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unknown hidden_act {self.hidden_act!r}; choose one of {sorted(ACTIVATIONS)}")
        if not (0 <= self.dropout < 1 and 0 <= self.drop_path_rate < 1 and self.mlp_ratio > 0):
            raise ValueError(f"dropout={self.dropout} and drop_path_rate={self.drop_path_rate} must be in [0, 1), "
                             f"mlp_ratio={self.mlp_ratio} positive")
        self.check_image_fields()

    @property
    def num_features(self) -> int:
        """Width of the last stage (Hugging Face's hidden_size)."""
        return self.embed_dim << (len(self.depths) - 1)



_224 = dict(image_size=224, patch_size=4, num_channels=3, num_labels=1000, window_size=7)
_28 = dict(image_size=28, num_channels=1, num_labels=10)
PRESETS = {  # Section 3.3's Swin-T, and two for 28x28 grey images
    "swin-t": dict(_224, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    # a 7x7 grid padded to 8x8 (four 4x4 windows, shift 2), then 4x4 (one window, no shift);
    # a training step costs about what vit-28-tiny's does
    "swin-28-tiny": dict(_28, patch_size=4, window_size=4, embed_dim=32, depths=[2, 2], num_heads=[2, 4]),
    # 14x14 (four 7x7 windows, shift 3), then 7x7 (one window): ~6x the step time
    "swin-28-small": dict(_28, patch_size=2, window_size=7, embed_dim=48, depths=[2, 2], num_heads=[3, 6]),
}


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch of a random subset of the batch."""
    if p == 0 or not training:
        return x
    keep = x.new_empty((x.size(0),) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class SwinBlock(Block):
    """Eq. (3): a pre-LN block whose attention works in (shifted) windows of a token grid."""

    def __init__(self, c: SwinConfig, dim: int, heads: int, shift: int, drop_path_rate: float):
        super().__init__(dim, heads, int(dim * c.mlp_ratio), act=c.hidden_act, dropout=c.dropout, eps=c.layer_norm_eps)
        self.window_size, self.shift_size, self.drop_path_rate = c.window_size, shift, drop_path_rate
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * c.window_size - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(c.window_size), persistent=False)

    def window_attention(self, x: Tensor, hw: tuple[int, int], need_weights: bool = False):
        (b, _, c), (h, w) = x.shape, hw
        m, shift = self.window_size, self.shift_size
        if min(h, w) <= m:  # one window covers the grid's short side: no shift
            m, shift = min(h, w), 0
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, -w % m, 0, -h % m))
        hp, wp = x.shape[1:3]
        mask = None
        if shift:  # roll up-left; the same (windows, 1, m*m, m*m) mask for every image of the batch
            x = x.roll((-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(hp, wp, m, shift, x.device)[:, None].repeat(b, 1, 1, 1)
        index = self.relative_position_index if m == self.window_size else \
            relative_position_index(m, self.window_size).to(x.device)
        bias = self.relative_position_bias_table[index].permute(2, 0, 1).unsqueeze(0)  # (1, heads, m*m, m*m)
        out, weights = self.attn(partition(x, m), mask=mask, bias=bias, need_weights=need_weights)
        x = unpartition(out, m, hp, wp)
        if shift:
            x = x.roll((shift, shift), dims=(1, 2))
        return x[:, :h, :w].reshape(b, h * w, c), weights

    def forward(self, x: Tensor, hw: tuple[int, int], *, need_weights: bool = False):
        """x: (B, h*w, C), row-major over the h x w grid -> (x, weights (B*windows, heads, m*m, m*m))."""
        out, weights = self.window_attention(self.ln_1(x), hw, need_weights)
        # stochastic depth on both branches, as the paper's code (transformers drops only the attention's)
        x = x + drop_path(out, self.drop_path_rate, self.training)
        x = x + drop_path(self.mlp(self.ln_2(x)), self.drop_path_rate, self.training)
        return x, weights


class PatchMerging(nn.Module):
    """Concatenate each 2x2 group of tokens (4C), LayerNorm, linear to 2C (names as HF's)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        (b, _, c), (h, w) = x.shape, hw
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.flatten(1, 2))), ((h + 1) // 2, (w + 1) // 2)


class Stage(nn.Module):
    def __init__(self, c: SwinConfig, i: int, rates: list[float]):
        super().__init__()
        dim = c.embed_dim << i
        self.blocks = nn.ModuleList(SwinBlock(c, dim, c.num_heads[i], (j % 2) * (c.window_size // 2), rate)
                                    for j, rate in enumerate(rates))
        self.downsample = PatchMerging(dim) if i < len(c.depths) - 1 else None


class Embeddings(nn.Module):
    def __init__(self, c: SwinConfig):
        super().__init__()
        self.projection = nn.Conv2d(c.num_channels, c.embed_dim, c.patch_size, stride=c.patch_size)
        self.norm = nn.LayerNorm(c.embed_dim)
        self.patch_size = c.patch_size

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, tuple[int, int]]:
        h, w = pixel_values.shape[-2:]
        x = self.projection(F.pad(pixel_values, (0, -w % self.patch_size, 0, -h % self.patch_size)))
        return self.norm(x.flatten(2).transpose(1, 2)), tuple(x.shape[-2:])


class Swin(ImageClassifier):
    config_class = SwinConfig
    model_type = "swin"
    presets = PRESETS

    def __init__(self, config: SwinConfig):
        super().__init__()
        self.config = c = config
        self.embeddings = Embeddings(c)
        self.drop = nn.Dropout(c.dropout)
        n = sum(c.depths)
        rates = [c.drop_path_rate * k / max(n - 1, 1) for k in range(n)]
        self.layers = nn.ModuleList(Stage(c, i, rates[sum(c.depths[:i]):sum(c.depths[:i + 1])])
                                    for i in range(len(c.depths)))
        self.layernorm = nn.LayerNorm(c.num_features, eps=c.layer_norm_eps)
        self.classifier = nn.Linear(c.num_features, c.num_labels) if c.num_labels > 0 else nn.Identity()
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, SwinBlock):
                nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)
                if not c.qkv_bias:  # no bias on Q, K, V (the output projection keeps its bias)
                    module.attn.c_attn.bias.requires_grad_(False).zero_()

    def check_input(self, pixel_values: Tensor) -> None:
        c = self.config
        h, w = check_pixels(pixel_values, c)
        if min(h, w) < c.patch_size:
            raise ValueError(f"image size {h}x{w} is smaller than one {c.patch_size}x{c.patch_size} patch; the model "
                             f"takes images of at least {c.patch_size}x{c.patch_size} (it was trained at "
                             f"{c.image_size}x{c.image_size})")

    def forward_features(self, pixel_values: Tensor, *, attentions: list | None = None) -> Tensor:
        """All tokens of the last stage after the final LayerNorm: (batch, h*w, num_features).

        attentions: pass a list to receive each block's window attention weights
            (batch * windows, heads, m*m, m*m); this switches attention to the eager path.
        """
        self.check_input(pixel_values)
        x, hw = self.embeddings(pixel_values)
        x = self.drop(x)  # Hugging Face's embeddings.dropout
        for stage in self.layers:
            for block in stage.blocks:
                x, w = block(x, hw, need_weights=attentions is not None)
                if attentions is not None:
                    attentions.append(w)
            if stage.downsample is not None:
                x, hw = stage.downsample(x, hw)
        return self.layernorm(x)

    def forward_head(self, features: Tensor) -> Tensor:
        """Class logits from the average of the last stage's tokens."""
        return self.classifier(features.mean(dim=1))
