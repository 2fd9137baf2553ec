import warnings

import pytest
import torch

from qkv import GPT, GPTConfig
from qkv.inference.generate import generate, matvec_layout, sample_next, stream
from qkv.nn import Block, MultiHeadAttention


@pytest.fixture
def model():
    torch.manual_seed(1)
    return GPT(GPTConfig(vocab_size=40, block_size=12, n_layer=2, n_head=2, n_embd=32)).eval()


def test_greedy_is_the_argmax_of_full_recomputation(model):
    prompt = torch.tensor([[3, 7, 1]])
    out = generate(model, prompt, 8, temperature=0)
    ids = prompt
    for _ in range(8):
        ids = torch.cat([ids, model(ids).argmax(-1)[:, -1:]], dim=1)
    assert torch.equal(out, ids)


def test_seeded_sampling_repeats_and_seeds_differ(model):
    prompt = torch.tensor([[3, 7, 1], [2, 2, 2]])
    a = generate(model, prompt, 10, temperature=1.5, seed=1)
    assert torch.equal(a, generate(model, prompt, 10, temperature=1.5, seed=1))
    assert not torch.equal(a, generate(model, prompt, 10, temperature=1.5, seed=2))


def test_top_k_and_top_p_keep_only_their_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(400, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, top_k=2, generator=g).tolist()) == {0, 1}
    assert set(sample_next(logits, top_p=0.7, generator=g).tolist()) == {0, 1}
    assert set(sample_next(logits, top_p=0.85, generator=g).tolist()) == {0, 1, 2}
    assert set(sample_next(logits, top_p=0.1, generator=g).tolist()) == {0}
    assert set(sample_next(logits, generator=g).tolist()) == {0, 1, 2, 3}


def test_running_past_the_context_slides_the_window(model):
    out = generate(model, torch.tensor([[1] * 10]), 8, temperature=0)
    assert out.shape == (1, 18)
    # the last token saw only the last block_size tokens
    assert out[0, -1] == model(out[:, -13:-1]).argmax(-1)[0, -1]


def test_bad_requests_are_named(model):
    with pytest.raises(ValueError, match="context is 12; shorten"):
        generate(model, torch.ones(1, 13, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, torch.ones(1, 2, dtype=torch.long), 1, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, torch.ones(1, 2, dtype=torch.long), 1, top_p=1.5)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        generate(model, torch.ones(1, 2, dtype=torch.long), -1)
    assert generate(model, torch.ones(1, 2, dtype=torch.long), 0).tolist() == [[1, 1]]
    with pytest.raises(ValueError, match="non-empty prompt"):
        generate(model, torch.ones(1, 0, dtype=torch.long), 1)
    trunk = GPT(GPTConfig(vocab_size=40, block_size=12, n_layer=1, n_head=2, n_embd=8, lm_head_size=0,
                          tie_word_embeddings=False))
    with pytest.raises(ValueError, match="this model has no head"):
        generate(trunk, torch.ones(1, 2, dtype=torch.long), 1)


def test_generation_stops_at_end_of_text(model):
    first = generate(model, torch.tensor([[5]]), 1, temperature=0)[0, -1].item()
    out = generate(model, torch.tensor([[5]]), 10, temperature=0, eos_token_id=first)
    assert out.tolist() == [[5, first]]


@pytest.mark.parametrize("new", [5, 20])  # within the context, and past it
def test_kv_cache_gives_exactly_the_tokens_of_recomputation(model, new):
    prompt = torch.tensor([[3, 7, 1, 4], [9, 9, 2, 0]])
    cached = generate(model, prompt, new, temperature=0)
    assert torch.equal(cached, generate(model, prompt, new, temperature=0, use_cache=False))
    sampled = generate(model, prompt, new, temperature=1.0, top_k=5, seed=3)
    assert torch.equal(sampled, generate(model, prompt, new, temperature=1.0, top_k=5, seed=3, use_cache=False))


def test_cached_logits_match_the_full_forward(model):
    x = torch.randint(0, 40, (2, 10))
    cache = model.new_cache(2)
    steps = [model(x[:, :6], cache=cache)] + [model(x[:, t:t + 1], cache=cache) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), model(x), atol=1e-5, rtol=1e-5)
    small = model.new_cache(2, max_len=4)
    with pytest.raises(ValueError, match="KV cache full: 0 \\+ 6 positions exceed its 4"):
        model(x[:, :6], cache=small)


def test_one_step_is_the_forward_of_one_new_position(model):
    """GPT.step (what decoding runs per token) gives the logits of forward with the cache,
    unpadded and left-padded, and advances the cache as forward does."""
    x = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(0))
    for mask in (None, torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1]])):
        a, b = model.new_cache(2), model.new_cache(2)
        with torch.no_grad():
            model(x[:, :6], None if mask is None else mask[:, :6], cache=a)
            model(x[:, :6], None if mask is None else mask[:, :6], cache=b)
            full = model(x[:, 6:], mask, cache=a)[:, -1]
            torch.testing.assert_close(model.step(x[:, 6], b, mask), full, atol=1e-5, rtol=1e-5)
        assert a.length == b.length == 7
    with pytest.raises(ValueError, match="pre-LN self-attention blocks only"):
        Block(8, 2, norm_first=False).step(torch.zeros(1, 8), model.new_cache(1).layers[0])
    with pytest.raises(ValueError, match="step is self-attention"):
        MultiHeadAttention(8, 2, cross=True).step(torch.zeros(1, 8), model.new_cache(1).layers[0])


def test_compiled_decoding_gives_the_tokens_of_eager(model):
    """compile=True runs GPT.step through torch.compile: the same tokens, left padding too."""
    batch = torch.tensor([[5, 6, 7, 8], [0, 0, 3, 2]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    eager = generate(model, batch, 6, temperature=0, attention_mask=mask)
    assert torch.equal(generate(model, batch, 6, temperature=0, attention_mask=mask, compile=True), eager)


def test_compiled_decoding_falls_back_to_eager_where_compilation_fails(model, monkeypatch):
    """A machine without a C++ compiler: one warning, then the eager step's tokens."""
    def broken(fn, **options):
        def call(*args):
            raise torch._dynamo.exc.BackendCompilerFailed(fn, RuntimeError("no C++ compiler found"), None)
        return call

    prompt = torch.tensor([[5, 6, 7]])
    eager = generate(model, prompt, 6, temperature=0)
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: no C\+\+ compiler found\)"):
        assert torch.equal(generate(model, prompt, 6, temperature=0, compile=True), eager)
    with warnings.catch_warnings():  # eager from now on: no second warning
        warnings.simplefilter("error")
        assert torch.equal(generate(model, prompt, 6, temperature=0, compile=True), eager)


def test_left_padded_batch_matches_each_prompt_alone(model):
    a, b = [5, 6, 7, 8, 9], [3, 2]
    batch = torch.tensor([a, [0, 0, 0] + b])
    mask = torch.tensor([[1] * 5, [0, 0, 0, 1, 1]])
    out = generate(model, batch, 9, temperature=0, attention_mask=mask)  # 14 > context 12 too
    assert out[0].tolist() == generate(model, torch.tensor([a]), 9, temperature=0)[0].tolist()
    assert out[1, 3:].tolist() == generate(model, torch.tensor([b]), 9, temperature=0)[0].tolist()
    with pytest.raises(ValueError, match="pad prompts on the left"):
        generate(model, batch, 2, attention_mask=mask.flip(1))


@pytest.mark.parametrize("batch", [1, 3])
def test_the_decoding_layout_changes_no_token_and_is_undone(model, batch):
    """matvec_layout stores the linear weights (in, out) while generations run inside it: the
    tokens are those of nn.Linear's layout, and afterwards every weight is contiguous again,
    unchanged and still tied; a block inside another leaves the layout to the outer one."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prompt = torch.randint(0, 40, (batch, 3), generator=torch.Generator().manual_seed(batch))
    plain = generate(model, prompt, 8, temperature=0)
    with matvec_layout(model):
        weight = model.transformer.h[0].attn.c_attn.weight
        assert not weight.is_contiguous() and weight.t().is_contiguous()
        assert model.lm_head.weight.is_contiguous()  # tied to the embedding: left as it is
        with matvec_layout(model):
            assert torch.equal(generate(model, prompt, 8, temperature=0), plain)
        assert not weight.is_contiguous()  # still the outer block's layout
        assert torch.equal(generate(model, prompt, 20, temperature=0), generate(model, prompt, 20, temperature=0,
                                                                                 use_cache=False))
    assert all(p.is_contiguous() for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_the_decoding_layout_leaves_weights_that_share_storage_alone():
    a, b = torch.nn.Linear(4, 6), torch.nn.Linear(4, 6)
    b.weight = torch.nn.Parameter(a.weight.data)  # another tensor on the same storage
    c = torch.nn.Linear(4, 6)
    model, before = torch.nn.Sequential(a, b, c), a.weight.detach().clone()
    with matvec_layout(model):
        assert a.weight.is_contiguous() and b.weight.is_contiguous() and not c.weight.is_contiguous()
        assert torch.equal(b.weight, before)


def test_a_stream_inside_the_decoding_layout_and_one_abandoned_there(model):
    prompt = torch.tensor([[3, 7, 1]])
    plain = generate(model, prompt, 6, temperature=0)
    with matvec_layout(model):
        tokens = stream(model, prompt, 6, temperature=0)
        assert next(tokens).item() == plain[0, 3]
        tokens.close()
        assert torch.equal(torch.stack(list(stream(model, prompt, 6, temperature=0)), 1), plain[:, 3:])
    assert all(p.is_contiguous() for p in model.parameters())
