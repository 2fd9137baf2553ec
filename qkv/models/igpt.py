"""iGPT: a GPT over the pixels of an image (Chen et al., 2020, "Generative Pretraining from
Pixels").

An image of ``image_size`` x ``image_size`` grey pixels is a sequence of palette tokens
in raster order (``qkv.data.palette``: each pixel the nearest of k grey levels), read after a
start-of-image token (id k, the last of the vocabulary). The model is qkv's GPT with
ImageGPT's three differences set as options of ``GPTConfig``: its LayerNorm is
x / sqrt(mean(x^2) + eps) * g (``norm = "rmsnorm"``: no mean subtraction, no bias), its
head is untied and has ``vocab_size - 1`` outputs (the start token is never predicted:
``lm_head_size``), and its activation is x * sigmoid(1.702 x) (``"quick_gelu"``). Parameter
names are those of Hugging Face's ``ImageGPTForCausalImageModeling``
(``qkv/interop/imagegpt.py``).

The training input of an image with tokens t_0 .. t_{N-1} is [start, t_0 .. t_{N-2}] and
its targets are t_0 .. t_{N-1}: N = image_size^2 positions, the whole context. The palette
lives in the config (``config.json``), so a loaded model maps pixels to tokens and back.

Its role is ``"image_lm"``, not ``"causal_lm"``: a text language-modelling task cannot feed
it (its vocabulary is a palette plus a start token, its context one image), and an image
task needs what a text GPT lacks (palette, image size).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .gpt import GPT, GPTConfig


@dataclass
class ImageGPTConfig(GPTConfig):
    vocab_size: int = 9            # k palette entries + the start token (id k)
    block_size: int = 196          # image_size ** 2 positions
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    activation: str = "quick_gelu"
    tie_word_embeddings: bool = False
    norm: str = "rmsnorm"
    lm_head_size: int | None = None  # None here = vocab_size - 1 (all but the start token); 0 = no head
    image_size: int = 14           # the side of the square grey image
    palette: list[float] = field(default_factory=list)  # token i is grey level palette[i] (0..255); [] = unknown

    def __post_init__(self):
        if self.lm_head_size is None and isinstance(self.vocab_size, int):
            self.lm_head_size = self.vocab_size - 1
        super().__post_init__()
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2 (palette entries + the start token), "
                             f"got {self.vocab_size}")
        if self.lm_head_size not in (self.vocab_size - 1, 0):
            raise ValueError(f"an image GPT's head predicts the vocab_size - 1 = {self.vocab_size - 1} palette "
                             f"tokens (or is absent: 0), not lm_head_size={self.lm_head_size}")
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        if self.image_size ** 2 > self.block_size:
            raise ValueError(f"image_size={self.image_size} needs {self.image_size ** 2} positions but "
                             f"block_size={self.block_size}; set block_size={self.image_size ** 2}")
        if self.palette and len(self.palette) != self.vocab_size - 1:
            raise ValueError(f"the palette has {len(self.palette)} entries but vocab_size={self.vocab_size} "
                             f"holds {self.vocab_size - 1} palette tokens and the start token")
        if any(not 0 <= g <= 255 for g in self.palette):
            raise ValueError("palette entries are grey levels in 0..255")

    @property
    def start_token(self) -> int:
        return self.vocab_size - 1

    @property
    def pixels(self) -> int:
        return self.image_size ** 2


def _preset(side: int, n_layer: int, n_head: int, n_embd: int) -> dict:
    return dict(image_size=side, block_size=side * side, n_layer=n_layer, n_head=n_head, n_embd=n_embd)


PRESETS = {  # grey images at 14x14, 16x16 and 28x28 (the palette, hence vocab_size, comes from the data)
    "igpt-14-small": _preset(14, 4, 4, 128),
    "igpt-16-small": _preset(16, 4, 4, 128),
    "igpt-28-small": _preset(28, 4, 4, 128),
}


class ImageGPT(GPT):
    config_class = ImageGPTConfig
    model_type = "igpt"
    role = "image_lm"
    presets = PRESETS

    def with_start(self, tokens: Tensor) -> Tensor:
        """Palette tokens (batch, n) -> (batch, 1 + n): the start token, then the tokens."""
        start = tokens.new_full((tokens.size(0), 1), self.config.start_token)
        return torch.cat([start, tokens], dim=1)

    def training_pair(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Palette tokens (batch, N) -> (inputs [start, t_0 .. t_{N-2}], targets t_0 .. t_{N-1})."""
        return self.with_start(tokens[:, :-1]), tokens
