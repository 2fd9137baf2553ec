import math

import pytest
import torch

from qkv.nn import Block, MultiHeadAttention, causal_mask, padding_mask, scaled_dot_product_attention, sinusoidal_table


def qkv_tensors(b=2, h=3, tq=5, tk=5, d=8):
    return torch.randn(b, h, tq, d), torch.randn(b, h, tk, d), torch.randn(b, h, tk, d)


def test_causal_mask_is_bottom_right_aligned():
    assert causal_mask(3).tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    # two new queries after a cached prefix of three keys
    assert causal_mask(2, 5).tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    with pytest.raises(ValueError, match="shorter"):
        causal_mask(4, 2)


def test_padding_mask_shape_and_convention():
    m = padding_mask(torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert m.shape == (2, 1, 1, 3) and m.dtype == torch.bool
    assert m[1, 0, 0].tolist() == [True, False, False]
    with pytest.raises(ValueError, match="batch, seq_len"):
        padding_mask(torch.ones(3))


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("tq,tk", [(5, 5), (2, 5)])
def test_eager_path_matches_fused_kernel(is_causal, tq, tk):
    q, k, v = qkv_tensors(tq=tq, tk=tk)
    mask = torch.rand(2, 1, tq, tk) > 0.3
    mask[..., -1] = True  # every query keeps at least one key
    for m in (None, mask):
        fast, none = scaled_dot_product_attention(q, k, v, m, is_causal=is_causal)
        eager, w = scaled_dot_product_attention(q, k, v, m, is_causal=is_causal, need_weights=True)
        assert none is None
        torch.testing.assert_close(fast, eager, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, tq))


def test_eager_attention_is_equation_one():
    q, k, v = qkv_tensors()
    out, w = scaled_dot_product_attention(q, k, v, need_weights=True)
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.size(-1)), -1) @ v
    torch.testing.assert_close(out, expected)


def test_cross_attention_attends_to_context_and_respects_its_padding():
    attn = MultiHeadAttention(16, 4, cross=True, kv_dim=12).eval()
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 6, 12)
    mask = padding_mask(torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]]))
    out, w = attn(x, ctx, mask, need_weights=True)
    assert out.shape == (2, 3, 16) and w.shape == (2, 4, 3, 6)
    assert w[1, ..., 4:].abs().max() == 0
    changed = ctx.clone()
    changed[1, 4:] = torch.randn(2, 12)  # padding positions change: row 1 must not
    torch.testing.assert_close(attn(x, changed, mask)[0][1], out[1])
    with pytest.raises(ValueError, match="context"):
        attn(x)


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)


@pytest.mark.parametrize("norm_first", [True, False])
def test_block_pre_and_post_ln(norm_first):
    block = Block(16, 4, norm_first=norm_first, cross_attention=True).eval()
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    y, w = block(x, is_causal=True, context=ctx, need_weights=True)
    assert y.shape == x.shape and w.shape == (2, 4, 5, 5)
    assert torch.all(w.triu(1) == 0)  # causal
    if not norm_first:  # post-LN: the output is a LayerNorm's
        torch.testing.assert_close(y.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)


def test_sinusoidal_table_follows_the_paper():
    pe = sinusoidal_table(50, 16)
    pos, i = 7, 3
    assert pe[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-6)
