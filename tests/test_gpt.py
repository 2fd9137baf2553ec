import pytest
import torch

import qkv
from qkv import GPT, GPTConfig
from qkv.errors import CheckpointError


def tiny(**kw):
    return GPT(GPTConfig(**{**dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32), **kw}))


def test_logits_shape_and_loss():
    model = tiny()
    x, y = torch.randint(0, 50, (3, 10)), torch.randint(0, 50, (3, 10))
    assert model(x).shape == (3, 10, 50)
    logits, loss = model(x, labels=y)
    assert logits.shape == (3, 10, 50) and loss.ndim == 0
    assert loss.item() == pytest.approx(torch.log(torch.tensor(50.0)).item(), rel=0.1)


def test_causal_outputs_do_not_see_the_future():
    model = tiny().eval()
    x = torch.randint(0, 50, (2, 16))
    y = x.clone()
    y[:, 9:] = torch.randint(0, 50, (2, 7))
    torch.testing.assert_close(model(x)[:, :9], model(y)[:, :9], rtol=0, atol=1e-6)
    assert not torch.allclose(model(x)[:, 9:], model(y)[:, 9:])


def test_weight_tying_and_untied_head():
    m = tiny()
    assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr()
    u = tiny(tie_word_embeddings=False)
    assert u.lm_head.weight.data_ptr() != u.transformer.wte.weight.data_ptr()


def test_parameter_names_follow_hugging_face_gpt2():
    names = set(tiny().state_dict())
    for n in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
              "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.bias",
              "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight",
              "transformer.h.1.ln_2.bias", "transformer.ln_f.weight", "lm_head.weight"):
        assert n in names


def test_attention_maps_come_from_the_eager_path_and_change_nothing():
    model = tiny().eval()
    x = torch.randint(0, 50, (2, 12))
    maps = []
    with_maps = model.forward_features(x, attentions=maps)
    torch.testing.assert_close(with_maps, model.forward_features(x), atol=1e-5, rtol=1e-5)
    assert len(maps) == 2 and maps[0].shape == (2, 2, 12, 12)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(2, 2, 12))


def test_bad_input_is_named():
    model = tiny()
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, seq_len"):
        model(torch.zeros(17, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        tiny(n_head=3)
    with pytest.raises(ValueError, match="activation"):
        tiny(activation="gelu_fancy")


def test_save_load_round_trips_bit_for_bit(tmp_path):
    for tied in (True, False):
        model = tiny(tie_word_embeddings=tied).eval()
        qkv.save_model(model, tmp_path / str(tied))
        loaded, tokenizer = qkv.load(tmp_path / str(tied))
        assert tokenizer is None and isinstance(loaded, GPT)
        assert loaded.config == model.config
        x = torch.randint(0, 50, (2, 16))
        assert torch.equal(loaded(x), model(x))
        for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(a, b), n


def test_missing_and_corrupt_weights_are_named(tmp_path):
    qkv.save_model(tiny(), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        qkv.load(tmp_path)
    weights.unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        qkv.load(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        qkv.load(tmp_path / "nope")


def test_loss_falls_on_real_text(data_root):
    from qkv.data.lm import TokenWindows, corpus_tokenizer, encode_corpus

    corpus = data_root / "shakespeare"
    tok = corpus_tokenizer(corpus, "char")
    windows = TokenWindows(encode_corpus(corpus, tok)["train"], 32, seed=0)
    model = tiny(vocab_size=tok.vocab_size, block_size=32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for step in range(40):
        x, y = windows.batch(step * 16, 16)
        _, loss = model(x, labels=y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    last = sum(losses[-5:]) / 5
    assert losses[0] > 3.9  # ~ln(vocab): nothing known yet
    assert last < losses[0] - 0.8  # the character statistics are learnt
