"""ResNet: deep residual learning (He et al., 2016, "Deep Residual Learning for Image Recognition").

Sections 3.1-3.2: a block learns a residual F(x) and outputs relu(F(x) + x); where width or
resolution change, the shortcut is a strided 1x1 convolution (Section 3.3, option B, as
Hugging Face's). Section 3.3 / Figure 5: the basic block is two 3x3 convolutions
(ResNet-18/34), the bottleneck 1x1 (to a quarter of the width), 3x3, 1x1 (ResNet-50+).
Section 3.4: batch norm after every convolution, before the activation. Table 1: a 7x7
stride-2 convolution and a 3x3 stride-2 max-pool (the stem), four stages whose first block
halves the resolution (not in stage 1: the max-pool did), global average pooling, a linear layer.
Section 4.2 (CIFAR-10): a 3x3 stride-1 stem, no max-pool, three stages of widths 16/32/64
with n blocks each (6n + 2 layers): ``resnet-28-small`` is its ResNet-20 (n = 3).

Names are Hugging Face ``ResNetModel``'s (``embedder``, ``encoder``) plus ``classifier``;
``qkv/interop/resnet.py`` converts (the 7x7 stem only: Hugging Face has no other).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ..nn import ACTIVATIONS, hidden_layer
from .images import ImageClassifier, ImageConfig, check_pixels

LAYER_TYPES, STEMS = ("basic", "bottleneck"), ("7x7", "3x3")


@dataclass
class ResNetConfig(ImageConfig):
    image_size: int = 224         # height = width the model is trained at (any size >= its total stride runs)
    num_channels: int = 3         # 1 = grey, 3 = RGB
    embedding_size: int = 64      # width of the stem
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])  # per stage (block output)
    depths: list[int] = field(default_factory=lambda: [3, 4, 6, 3])                # blocks per stage
    layer_type: str = "bottleneck"  # basic | bottleneck
    hidden_act: str = "relu"      # after the stem and each block's sum (inside a block: ReLU, as HF's)
    downsample_in_first_stage: bool = False  # stride 2 in the first stage too
    downsample_in_bottleneck: bool = False   # bottleneck: the stride on the first 1x1 (not the 3x3)
    stem: str = "7x7"             # 7x7: conv 7x7/2 + max-pool 3x3/2 (Table 1); 3x3: conv 3x3/1, no pool (Sec. 4.2)
    dropout: float = 0.0          # on the pooled features, before the classifier (not in the paper)
    num_labels: int = 1000        # 0 = no head: logits are the pooled features
    class_names: list[str] = field(default_factory=list)   # one per label; [] = "0", "1", ...
    image_mean: list[float] = field(default_factory=list)  # per channel; [] = 0.5 each
    image_std: list[float] = field(default_factory=list)   # per channel; [] = 0.5 each

    def __post_init__(self):
        for name in ("image_size", "num_channels", "embedding_size", "hidden_sizes", "depths"):
            values = getattr(self, name) if isinstance(getattr(self, name), list) else [getattr(self, name)]
            if not values or any(not isinstance(v, int) or v <= 0 for v in values):
                raise ValueError(f"{name} must be a positive integer (or a non-empty list of them), "
                                 f"got {getattr(self, name)!r}")
        if len(self.hidden_sizes) != len(self.depths):
            raise ValueError(f"hidden_sizes ({len(self.hidden_sizes)} stages) and depths ({len(self.depths)} "
                             "stages) must have one entry per stage")
        for name, choices in (("layer_type", LAYER_TYPES), ("stem", STEMS), ("hidden_act", tuple(ACTIVATIONS))):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")
        if self.layer_type == "bottleneck" and any(h % 4 for h in self.hidden_sizes):
            raise ValueError(f"a bottleneck block reduces its width by 4: hidden_sizes={self.hidden_sizes} "
                             "must be multiples of 4")
        self.check_image_fields()

    @property
    def stride(self) -> int:
        """How much the network downsamples: an image must be at least this many pixels wide."""
        first = (4 if self.stem == "7x7" else 1) * (2 if self.downsample_in_first_stage else 1)
        return first * 2 ** (len(self.depths) - 1)



_IMAGENET = dict(image_size=224, num_channels=3, num_labels=1000, embedding_size=64)
PRESETS = {  # Table 1 (as microsoft/resnet-18 and -50), and the CIFAR ResNet-20 of Section 4.2 for 28x28 grey
    "resnet-18": dict(_IMAGENET, layer_type="basic", hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2]),
    "resnet-50": dict(_IMAGENET, layer_type="bottleneck", hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3]),
    "resnet-28-small": dict(image_size=28, num_channels=1, num_labels=10, stem="3x3", embedding_size=16,
                            layer_type="basic", hidden_sizes=[16, 32, 64], depths=[3, 3, 3]),  # 0.27M parameters
}


class ConvLayer(nn.Module):
    """Convolution (no bias), batch norm, activation (None: none)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, act: str | None = "relu"):
        super().__init__()
        self.convolution = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.normalization = nn.BatchNorm2d(c_out)
        self.act = ACTIVATIONS[act] if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.normalization(self.convolution(x))
        return self.act(x) if self.act else x


@hidden_layer  # its outputs are the hidden states qkv.nn.capture records (CKA)
class ResidualBlock(nn.Module):
    """act(F(x) + shortcut(x)), F basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1) (Figure 5)."""

    def __init__(self, c: ResNetConfig, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        projection = c_in != c_out or stride != 1  # option B (Section 3.3): 1x1 convolution + BN
        self.shortcut = ConvLayer(c_in, c_out, 1, stride, None) if projection else nn.Identity()
        if c.layer_type == "basic":
            self.layer = nn.Sequential(ConvLayer(c_in, c_out, 3, stride), ConvLayer(c_out, c_out, 3, 1, None))
        else:
            mid, first = c_out // 4, c.downsample_in_bottleneck
            self.layer = nn.Sequential(ConvLayer(c_in, mid, 1, stride if first else 1),
                                       ConvLayer(mid, mid, 3, 1 if first else stride),
                                       ConvLayer(mid, c_out, 1, 1, None))
        self.act = ACTIVATIONS[c.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.layer(x) + self.shortcut(x))


class Stage(nn.Module):
    """Blocks of one width; the first changes width and (stride 2) halves the resolution."""

    def __init__(self, c: ResNetConfig, c_in: int, c_out: int, stride: int, depth: int):
        super().__init__()
        self.layers = nn.Sequential(ResidualBlock(c, c_in, c_out, stride),
                                    *(ResidualBlock(c, c_out, c_out) for _ in range(depth - 1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ResNet(ImageClassifier):
    config_class = ResNetConfig
    model_type = "resnet"
    presets = PRESETS

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = c = config
        big = c.stem == "7x7"
        self.embedder = nn.Sequential()  # the stem, HF's ResNetEmbeddings: embedder (conv, BN, act), pooler
        self.embedder.add_module("embedder", ConvLayer(c.num_channels, c.embedding_size, 7 if big else 3,
                                                       2 if big else 1, c.hidden_act))
        self.embedder.add_module("pooler", nn.MaxPool2d(3, stride=2, padding=1) if big else nn.Identity())
        widths = [c.embedding_size, *c.hidden_sizes]
        self.encoder = nn.Module()
        self.encoder.stages = nn.ModuleList(
            Stage(c, widths[i], widths[i + 1], 2 if i > 0 or c.downsample_in_first_stage else 1, depth)
            for i, depth in enumerate(c.depths))
        self.drop = nn.Dropout(c.dropout)
        self.classifier = nn.Linear(c.hidden_sizes[-1], c.num_labels) if c.num_labels > 0 else nn.Identity()
        for m in self.modules():  # as Hugging Face (and torchvision): He init (Section 3.4), BN = identity
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def check_input(self, pixel_values: Tensor) -> None:
        c = self.config
        h, w = check_pixels(pixel_values, c)
        if min(h, w) < c.stride:
            raise ValueError(f"image size {h}x{w} is too small: the model downsamples by {c.stride}, so it needs "
                             f"at least {c.stride}x{c.stride} (it was trained at {c.image_size}x{c.image_size})")

    def forward_features(self, pixel_values: Tensor, *, attentions: list | None = None) -> Tensor:
        """The last stage's feature map (batch, hidden_sizes[-1], h, w), before pooling:
        Hugging Face's ``last_hidden_state``. A CNN has no attention: ``attentions`` must be None."""
        if attentions is not None:
            raise ValueError("a ResNet has no attention weights to return; pass attentions=None")
        return self.forward_stages(pixel_values)[-1]

    def forward_stages(self, pixel_values: Tensor) -> list[Tensor]:
        """Every stage's feature map, first to last (strides ``stride / 2**(stages-1-i)``): what a
        detector takes as its backbone's output (DETR the last, Deformable DETR the last three)."""
        self.check_input(pixel_values)
        x, maps = self.embedder(pixel_values), []
        for stage in self.encoder.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def pool(self, features: Tensor) -> Tensor:
        """Global average pooling: (batch, channels); HF's ``pooler_output`` without its 1x1."""
        return features.mean(dim=(2, 3))

    def forward_head(self, features: Tensor) -> Tensor:
        """Class logits from the feature map: global average pool, (dropout,) linear."""
        return self.classifier(self.drop(self.pool(features)))
