"""qkv.Transformer: against Hugging Face MarianMTModel, padding, KV-cache decoding."""
import pytest
import torch
import transformers

import qkv
from qkv import Transformer, TransformerConfig
from qkv.config import ConfigError
from qkv.inference.translate import beam_search, translate

TINY = dict(vocab_size=40, max_position_embeddings=32, d_model=16, encoder_layers=2, decoder_layers=2,
            n_head=2, ffn_dim=24, dropout=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def marian(**overrides):
    cfg = dict(vocab_size=40, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, max_position_embeddings=32,
               pad_token_id=0, eos_token_id=2, decoder_start_token_id=0, dropout=0.0,
               activation_function="swish", scale_embedding=True)
    torch.manual_seed(0)
    model = transformers.MarianMTModel(transformers.MarianConfig(**{**cfg, **overrides})).eval()
    with torch.no_grad():  # a non-zero final_logits_bias, so the test sees it
        model.final_logits_bias.normal_()
    return model


def batch():
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, 40, (3, 7), generator=g)
    mask = torch.ones_like(src)
    mask[1, 5:] = 0  # right-padded sources
    mask[2, 3:] = 0
    src = src.masked_fill(mask == 0, 0)
    tgt = torch.randint(3, 40, (3, 5), generator=g)
    return src, mask, tgt


@pytest.mark.parametrize("scale_embedding", [True, False])
def test_from_hf_matches_marian(tmp_path, scale_embedding):
    hf = marian(scale_embedding=scale_embedding)
    hf.save_pretrained(tmp_path)
    model = qkv.from_hf(tmp_path)
    src, mask, tgt = batch()
    with torch.no_grad():
        want = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
        got = model(src, tgt, attention_mask=mask)
        assert (got - want).abs().max() <= 1e-4
        want = hf(input_ids=src[:1], decoder_input_ids=tgt[:1]).logits  # no mask at all
        assert (model(src[:1], tgt[:1]) - want).abs().max() <= 1e-4


@pytest.mark.parametrize("interleaved", [False, True])
def test_save_hf_loads_in_transformers(tmp_path, interleaved):
    model = Transformer(TransformerConfig(**TINY, interleaved_positions=interleaved, activation="gelu")).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_()
    model.save_hf(tmp_path)
    hf = transformers.MarianMTModel.from_pretrained(tmp_path).eval()
    src, mask, tgt = batch()
    with torch.no_grad():
        want = model(src, tgt, attention_mask=mask)
        got = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
    assert (got - want).abs().max() <= 1e-4


def test_from_hf_rejects_what_it_cannot_honour(tmp_path):
    marian(decoder_ffn_dim=32).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="decoder_ffn_dim"):
        qkv.from_hf(tmp_path)


@pytest.mark.parametrize("norm_first", [False, True])
def test_source_padding_does_not_change_outputs(norm_first):
    model = Transformer(TransformerConfig(**TINY, norm_first=norm_first)).eval()
    src, mask, tgt = batch()
    with torch.no_grad():
        padded = model(src, tgt, attention_mask=mask)
        for row, n in ((1, 5), (2, 3)):
            alone = model(src[row:row + 1, :n], tgt[row:row + 1])
            assert torch.allclose(padded[row], alone[0], atol=1e-5)


def test_decoder_is_causal():
    model = Transformer(TransformerConfig(**TINY)).eval()
    src, mask, tgt = batch()
    changed = tgt.clone()
    changed[:, 3:] = 5
    with torch.no_grad():
        a, b = model(src, tgt, attention_mask=mask), model(src, changed, attention_mask=mask)
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def greedy_by_recomputation(model, src, mask, steps):
    """The reference: re-run the whole decoder on the prefix for every new token."""
    ids = torch.full((src.size(0), 1), model.config.bos_token_id)
    for _ in range(steps):
        nxt = model(src, ids, attention_mask=mask)[:, -1].argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], 1)
    return ids[:, 1:]


def test_cached_greedy_equals_full_recomputation():
    torch.manual_seed(3)
    model = Transformer(TransformerConfig(**{**TINY, "eos_token_id": 39})).eval()  # an EOS it rarely picks
    src, mask, _ = batch()
    with torch.no_grad():
        want = greedy_by_recomputation(model, src, mask, 12)
    got = translate(model, src, mask, beam=1, max_new_tokens=12)
    for row, hyp in zip(want.tolist(), got):
        n = row.index(39) if 39 in row else len(row)
        assert hyp == row[:n]


def test_beam_of_one_is_greedy():
    torch.manual_seed(4)
    model = Transformer(TransformerConfig(**TINY)).eval()
    src, mask, _ = batch()
    with torch.no_grad():
        state = model.start_decoding(src, mask, 10)
        one = beam_search(model, state, 3, 1, 10, 1, 2, 0.6, torch.device("cpu"))
    assert one == translate(model, src, mask, beam=1, max_new_tokens=10)


def test_beam_batch_equals_one_by_one():
    torch.manual_seed(5)
    model = Transformer(TransformerConfig(**TINY)).eval()
    src, mask, _ = batch()
    together = translate(model, src, mask, beam=3, max_new_tokens=10)
    for row, n in ((0, 7), (1, 5), (2, 3)):
        assert together[row] == translate(model, src[row:row + 1, :n], None, beam=3, max_new_tokens=10)[0]


def test_save_load_round_trip(tmp_path):
    model = Transformer(TransformerConfig(**TINY)).eval()
    qkv.save_model(model, tmp_path)
    loaded = qkv.load(tmp_path).model
    assert isinstance(loaded, Transformer)
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n


def test_too_long_and_bad_inputs():
    model = Transformer(TransformerConfig(**TINY)).eval()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.ones(1, 40, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.ones(1, 4), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown model 'huge'.*transformer-base"):
        qkv.models.build("huge")
    assert qkv.models.build("transformer-base", vocab_size=100).config.d_model == 512
