"""Multi-scale deformable attention (qkv.nn.deformable) against a direct per-point
computation of Eq. (3) (bilinear interpolation from the 4 neighbours by hand, zero
outside the map), against transformers' pure-PyTorch kernel and module, with a padding
mask on the values, and its sampling points captured."""
import math

import pytest
import torch
import transformers
from transformers.models.deformable_detr import modeling_deformable_detr as hf_ddetr
from transformers.models.mask2former.modeling_mask2former import multi_scale_deformable_attention as hf_msda

from qkv.nn.deformable import (MultiScaleDeformableAttention, Sampling, capture_sampling,
                               multi_scale_deformable_attention)

SHAPES = [(5, 7), (3, 4), (2, 2)]  # (h, w) per level; S = 35 + 12 + 4 = 51
S = sum(h * w for h, w in SHAPES)


def randomised(module: MultiScaleDeformableAttention) -> MultiScaleDeformableAttention:
    """Offsets and weights that depend on the query and reach past the map's edges."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return module


def bilinear(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """image (D, h, w) at (x, y) in [0, 1] (align_corners=False): the 4 neighbouring pixel
    centres, weighted by closeness; pixels outside the map count as zero."""
    d, h, w = image.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(d, dtype=torch.float64)
    for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
        for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
            if 0 <= xi < w and 0 <= yi < h:
                out += wx * wy * image[:, yi, xi].double()
    return out


def by_hand(module, query, value, ref, mask=None):
    """Eq. (3) point by point: loop over batch, queries, heads, levels and points."""
    b, q, dim = query.shape
    m, n_levels, k = module.num_heads, module.n_levels, module.n_points
    d = dim // m
    v = module.value_proj(value)
    if mask is not None:
        v = v * mask[..., None]
    offsets = module.sampling_offsets(query).view(b, q, m, n_levels, k, 2)
    logits = module.attention_weights(query).view(b, q, m, n_levels * k)
    heads = torch.zeros(b, q, m, d, dtype=torch.float64)
    for bi in range(b):
        levels, start = [], 0
        for h, w in SHAPES:
            levels.append(v[bi, start:start + h * w].T.reshape(dim, h, w))
            start += h * w
        for qi in range(q):
            for mi in range(m):
                a = logits[bi, qi, mi].double().softmax(-1).view(n_levels, k)
                for li, (h, w) in enumerate(SHAPES):
                    r = ref[bi, qi]
                    for ki in range(k):
                        dx, dy = offsets[bi, qi, mi, li, ki].tolist()
                        if ref.size(-1) == 2:
                            x, y = r[0].item() + dx / w, r[1].item() + dy / h
                        else:
                            x = r[0].item() + dx / k * r[2].item() * 0.5
                            y = r[1].item() + dy / k * r[3].item() * 0.5
                        heads[bi, qi, mi] += a[li, ki] * bilinear(levels[li][mi * d:(mi + 1) * d], x, y)
    return module.output_proj(heads.flatten(2).float())


def inputs(b=2, q=6, dim=16, refs=2):
    ref = torch.rand(b, q, refs)
    if refs == 4:
        ref[..., 2:] = ref[..., 2:] * 0.5 + 0.1
    return torch.randn(b, q, dim), torch.randn(b, S, dim), ref


@pytest.mark.parametrize("refs", [2, 4], ids=["points", "boxes"])
def test_matches_a_direct_per_point_computation(refs):
    module = randomised(MultiScaleDeformableAttention(16, num_heads=2, n_levels=3, n_points=3))
    query, value, ref = inputs(refs=refs)
    with torch.no_grad():
        out = module(query, value, ref, SHAPES)
        want = by_hand(module, query, value, ref)
    assert out.shape == (2, 6, 16)
    assert (out - want).abs().max() <= 1e-5 and want.abs().max() > 0.1


def test_padding_mask_zeroes_the_padded_values():
    module = randomised(MultiScaleDeformableAttention(16, num_heads=2, n_levels=3, n_points=3))
    query, value, ref = inputs()
    mask = torch.ones(2, S, dtype=torch.bool)
    mask[0, 20:35] = False  # the last rows of level 0 of the first image
    mask[1, 45:] = False
    with torch.no_grad():
        out = module(query, value, ref, SHAPES, value_mask=mask)
        assert (out - by_hand(module, query, value, ref, mask)).abs().max() <= 1e-5
        changed = value.clone()
        changed[~mask] = torch.randn_like(changed[~mask]) * 100  # what padding holds does not matter
        assert (module(query, changed, ref, SHAPES, value_mask=mask) - out).abs().max() <= 1e-5
        assert (module(query, changed, ref, SHAPES) - out).abs().max() > 1e-2


@pytest.mark.parametrize("refs", [2, 4], ids=["points", "boxes"])
def test_matches_transformers(refs):
    """The kernel against transformers' two pure-PyTorch copies, and the whole module
    against DeformableDetrMultiscaleDeformableAttention with the same weights (same names)."""
    b, q, m, d, k = 2, 6, 4, 8, 3
    value = torch.randn(b, S, m, d)
    locations = torch.rand(b, q, m, len(SHAPES), k, 2) * 1.4 - 0.2  # some outside the map
    weights = torch.rand(b, q, m, len(SHAPES), k)
    ours = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    theirs = hf_msda(value, SHAPES, locations, weights)
    kernel = hf_ddetr.MultiScaleDeformableAttention()(value, torch.tensor(SHAPES), SHAPES, None, locations, weights, 64)
    assert (ours - theirs).abs().max() <= 1e-6 and (ours - kernel).abs().max() <= 1e-6

    config = transformers.DeformableDetrConfig(d_model=32, num_feature_levels=3, disable_custom_kernels=True,
                                               use_timm_backbone=False, backbone_config=transformers.ResNetConfig())
    hf = hf_ddetr.DeformableDetrMultiscaleDeformableAttention(config, num_heads=m, n_points=k)
    module = randomised(MultiScaleDeformableAttention(32, num_heads=m, n_levels=3, n_points=k))
    hf.load_state_dict(module.state_dict())
    query, value, ref = inputs(dim=32, refs=refs)
    mask = torch.ones(b, S, dtype=torch.bool)
    mask[1, 30:35] = False
    per_level = ref[:, :, None].repeat(1, 1, 3, 1) * 0.9  # HF's layout: one reference point per level
    with torch.no_grad():
        out = module(query, value, per_level, SHAPES, value_mask=mask)
        want, want_weights = hf(query, attention_mask=mask, encoder_hidden_states=value, reference_points=per_level,
                                spatial_shapes=torch.tensor(SHAPES), spatial_shapes_list=SHAPES)
    assert (out - want).abs().max() <= 1e-6 * want.abs().max() and want.abs().max() > 0.1  # float32 rounding


def test_initialisation_is_the_papers():
    module = MultiScaleDeformableAttention(32, num_heads=4, n_levels=2, n_points=3)
    bias = module.sampling_offsets.bias.view(4, 2, 3, 2)
    assert torch.allclose(bias[0, 1], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))  # head 0: along +x
    assert torch.allclose(bias[1, 0, 1], torch.tensor([0.0, 2.0]), atol=1e-6)               # head 1: along +y
    assert module.sampling_offsets.weight.abs().sum() == 0 and module.attention_weights.weight.abs().sum() == 0
    with capture_sampling(module) as seen:
        module(torch.randn(1, 5, 32), torch.randn(1, 20, 32), torch.rand(1, 5, 2), [(4, 4), (2, 2)])
    assert torch.allclose(seen[""][0].weights, torch.full((1, 5, 4, 2, 3), 1 / 6))  # uniform at the start


def test_sampling_points_are_captured():
    module = randomised(MultiScaleDeformableAttention(16, num_heads=2, n_levels=3, n_points=3))
    query, value, ref = inputs()
    assert module.captured is None
    with capture_sampling(module) as seen:
        out = module(query, value, ref, SHAPES)
        module(query, value, ref, SHAPES)
    assert module.captured is None and len(seen[""]) == 2
    assert torch.equal(out, module(query, value, ref, SHAPES))  # capturing changes nothing
    sampling = seen[""][0]
    assert isinstance(sampling, Sampling) and sampling.locations.shape == (2, 6, 2, 3, 3, 2)
    points, weights = sampling.query(1, 4)
    assert points.shape == (3, 2, 3, 2) and weights.shape == (3, 2, 3)  # (levels, heads, points, 2)
    assert torch.allclose(weights.sum((0, 2)), torch.ones(2))           # per head, over levels and points
    with pytest.raises(ValueError, match="no deformable attention .* matches 'decoder'"):
        with capture_sampling(module, "decoder"):
            pass


def test_bad_shapes_say_what_is_expected():
    module = MultiScaleDeformableAttention(16, num_heads=2, n_levels=3, n_points=2)
    query, value, ref = inputs()
    with pytest.raises(ValueError, match="must list 3 levels whose h.w sum to the 50 positions"):
        module(query, value[:, 1:], ref, SHAPES)
    with pytest.raises(ValueError, match=r"reference_points must be \(batch, queries, \[levels,\] 2 or 4\)"):
        module(query, value, torch.rand(2, 6, 3), SHAPES)
    with pytest.raises(ValueError, match="not divisible"):
        MultiScaleDeformableAttention(30, num_heads=4, n_levels=1, n_points=1)
