"""The measures the seeds' claims rest on, each a pure function of tensors.

- ``attention_rollout``: how attention flows from the input through all layers (Abnar and
  Zuidema, 2020, "Quantifying Attention Flow in Transformers").
- ``position_similarity``: cosine similarity of a ViT's learned position embeddings
  (Dosovitskiy et al., 2021, Figure 7 centre).
- ``mean_attention_distance``: how far, in pixels, each head looks (ibid., Figure 7 right,
  Appendix D.7).
- ``cka``, ``MinibatchCKA``: linear centred kernel alignment between two representations
  (Kornblith et al., 2019), and its unbiased minibatch estimator (Nguyen et al., 2021).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

FUSIONS = ("mean", "max", "min")


def fuse_heads(maps: Tensor, head_fusion: str = "mean") -> Tensor:
    """(B, H, T, T) -> (B, T, T): the heads' mean, max or min."""
    if head_fusion not in FUSIONS:
        raise ValueError(f"head_fusion must be one of {FUSIONS}, got {head_fusion!r}")
    return getattr(maps, head_fusion)(dim=1) if head_fusion == "mean" else getattr(maps, head_fusion)(dim=1).values


def attention_rollout(maps: list[Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> Tensor:
    """Attention rollout over layers, for a batch: ``maps`` is one (B, H, T, T) tensor per
    layer, first layer first. Each layer's heads are fused, the identity is added for the
    residual connection and every row is renormalised to sum to 1, Â = norm(A + I); the
    rollout is Â_L ... Â_2 Â_1. Row i of the result (B, T, T) says how much of token i's
    final state comes from each input token.

    discard_ratio: before adding the identity, this fraction of each fused map's weights on
    keys other than the first ([CLS], always kept), the smallest, is set to 0 (a sharper
    picture, as in Gildenblat's vit-explain).
    """
    if not maps:
        raise ValueError("attention_rollout needs at least one layer's attention map")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    result = None
    for layer in maps:
        if layer.dim() != 4 or layer.size(-1) != layer.size(-2):
            raise ValueError(f"each map must be (batch, heads, tokens, tokens), got {tuple(layer.shape)}")
        a = fuse_heads(layer.float(), head_fusion)
        if discard_ratio > 0:  # among the weights on keys other than [CLS]
            rest = a[:, :, 1:].flatten(1)
            k = int(rest.size(1) * discard_ratio)
            if k:
                rest = rest.scatter(1, rest.topk(k, dim=1, largest=False).indices, 0.0)
                a = torch.cat([a[:, :, :1], rest.view(a.size(0), a.size(1), -1)], dim=-1)
        a = a + torch.eye(a.size(-1), device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def cls_rollout_map(rollout: Tensor, grid: tuple[int, int]) -> Tensor:
    """The [CLS] row of a ViT's rollout over its patches, (B, rows, cols)."""
    return rollout[:, 0, 1:].reshape(rollout.size(0), *grid)


def position_similarity(position_embeddings: Tensor, grid: tuple[int, int], prefix: int = 1) -> Tensor:
    """Cosine similarity of every patch's position embedding with every other's, as the
    ViT paper draws it: (rows, cols, rows, cols), [r, c] being patch (r, c)'s small grid.
    ``position_embeddings``: (1 or none, prefix + rows*cols, D); ``prefix`` tokens ([CLS])
    are left out."""
    pos = position_embeddings.reshape(-1, position_embeddings.size(-1))[prefix:].float()
    if pos.size(0) != grid[0] * grid[1]:
        raise ValueError(f"{pos.size(0)} patch position embeddings do not make a {grid[0]}x{grid[1]} grid")
    pos = torch.nn.functional.normalize(pos, dim=-1)
    return (pos @ pos.T).reshape(*grid, *grid)


def patch_distances(grid: tuple[int, int], patch_size: int) -> Tensor:
    """(P, P) Euclidean distances in pixels between the centres of a grid's patches."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=-1).float() * patch_size
    return torch.cdist(centres, centres)


def mean_attention_distance(maps: list[Tensor], grid: tuple[int, int], patch_size: int,
                            prefix: int = 1) -> Tensor:
    """(layers, heads): for each head, the pixel distance between a query patch and the
    patches it attends to, weighted by attention, averaged over query patches and images.
    The ``prefix`` tokens ([CLS]) are left out as queries and keys, and each query's
    weights over the patches are renormalised to sum to 1."""
    dist = patch_distances(grid, patch_size)
    out = []
    for layer in maps:
        w = layer[:, :, prefix:, prefix:].float()
        if w.size(-1) != dist.size(0):
            raise ValueError(f"attention over {w.size(-1)} patches does not fit a {grid[0]}x{grid[1]} grid")
        w = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        out.append((w * dist.to(w.device)).sum(-1).mean(dim=(0, 2)))  # (heads,)
    return torch.stack(out)


def _centred(x: Tensor) -> Tensor:
    x = x.reshape(x.size(0), -1).double()
    return x - x.mean(dim=0, keepdim=True)


def cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of two representations of the same n examples, (n, d1) and (n, d2):
    ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) after centring each feature. 1 for the same
    representation; invariant to orthogonal maps and isotropic scaling."""
    if x.size(0) != y.size(0):
        raise ValueError(f"cka needs the same examples on both sides: {x.size(0)} vs {y.size(0)} rows")
    x, y = _centred(x), _centred(y)
    num = (y.T @ x).norm() ** 2
    return float(num / ((x.T @ x).norm() * (y.T @ y).norm()))


def unbiased_hsic(k: Tensor, l: Tensor) -> Tensor:
    """The unbiased HSIC estimator of Song et al. (2012) on two (n, n) Gram matrices
    (n > 3), as Nguyen et al. (2021) use it for minibatch CKA."""
    n = k.size(0)
    k, l = k.clone(), l.clone()
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    ones = torch.ones(n, 1, dtype=k.dtype, device=k.device)
    trace = (k * l).sum()
    middle = (ones.T @ k @ ones) * (ones.T @ l @ ones) / ((n - 1) * (n - 2))
    last = 2.0 / (n - 2) * (ones.T @ k @ l @ ones)
    return ((trace + middle - last) / (n * (n - 3))).squeeze()


class MinibatchCKA:
    """Linear CKA between every pair of layers of two models, accumulated over minibatches
    (Nguyen et al., 2021): CKA = sum HSIC(K, L) / sqrt(sum HSIC(K, K) sum HSIC(L, L)) with
    the unbiased HSIC of each batch. ``update`` takes one batch's features per layer."""

    def __init__(self, layers_a: int, layers_b: int):
        self.kl = torch.zeros(layers_a, layers_b, dtype=torch.float64)
        self.kk = torch.zeros(layers_a, dtype=torch.float64)
        self.ll = torch.zeros(layers_b, dtype=torch.float64)

    def update(self, feats_a: list[Tensor], feats_b: list[Tensor]) -> None:
        grams_a = [self._gram(f) for f in feats_a]
        grams_b = [self._gram(f) for f in feats_b]
        if grams_a[0].size(0) < 4:
            raise ValueError("minibatch CKA needs at least 4 examples per batch")
        for i, k in enumerate(grams_a):
            self.kk[i] += unbiased_hsic(k, k)
            for j, l in enumerate(grams_b):
                self.kl[i, j] += unbiased_hsic(k, l)
        for j, l in enumerate(grams_b):
            self.ll[j] += unbiased_hsic(l, l)

    @staticmethod
    def _gram(f: Tensor) -> Tensor:
        f = f.reshape(f.size(0), -1).double()
        return f @ f.T

    def compute(self) -> Tensor:
        """(layers_a, layers_b) CKA."""
        return self.kl / torch.sqrt(self.kk[:, None] * self.ll[None, :]).clamp_min(1e-30)


def grid_of(num_patches: int) -> tuple[int, int]:
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"{num_patches} patches are not a square grid")
    return side, side


TOKEN_PATTERNS = ("previous", "next", "self", "[CLS]", "[SEP]")


def token_pattern_attention(maps: list[Tensor]) -> Tensor:
    """(layers, heads, 5): how much attention the inner tokens of one ``[CLS] ... [SEP]``
    sequence give, on average, to the previous token, the next token, themselves, [CLS] and
    [SEP] (``TOKEN_PATTERNS``; Clark et al. 2019, Section 3). ``maps``: per layer (1, heads, n, n)."""
    a = torch.stack([m[0] for m in maps])            # (layers, heads, n, n)
    n = a.size(-1)
    if n < 3:
        raise ValueError(f"a sequence of {n} tokens has no token between [CLS] and [SEP]")
    inner = torch.arange(1, n - 1)                   # not [CLS] (first), not [SEP] (last)
    rows = a[:, :, inner]                            # (layers, heads, n - 2, n)
    targets = (inner - 1, inner + 1, inner, torch.zeros_like(inner), torch.full_like(inner, n - 1))
    return torch.stack([rows.gather(-1, t.expand(*rows.shape[:2], -1)[..., None])[..., 0].mean(-1)
                        for t in targets], -1)
