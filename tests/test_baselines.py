import pytest
import torch
import torch.nn.functional as F

import qkv
from qkv.models import LSTMSeq2Seq, LSTMSeq2SeqConfig

PAD, BOS, EOS = 0, 1, 2


def tiny(**kw):
    cfg = dict(vocab_size=20, d_model=16, hidden_size=24, num_layers=2, dropout=0.0)
    return LSTMSeq2Seq(LSTMSeq2SeqConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("score", ["general", "additive"])
def test_padding_changes_nothing_for_the_real_tokens(score):
    model = tiny(attention=score)
    src = torch.randint(3, 20, (3, 7))
    tgt = torch.randint(3, 20, (3, 5))
    lengths = torch.tensor([7, 4, 2])
    mask = (torch.arange(7) < lengths[:, None]).long()
    batched = model(src.masked_fill(mask == 0, PAD), tgt, attention_mask=mask)
    for i, n in enumerate(lengths.tolist()):
        alone = model(src[i:i + 1, :n], tgt[i:i + 1])
        torch.testing.assert_close(batched[i:i + 1], alone, atol=1e-5, rtol=0)


def test_decoder_does_not_see_future_targets():
    model = tiny()
    src, tgt = torch.randint(3, 20, (2, 6)), torch.randint(3, 20, (2, 8))
    changed = tgt.clone()
    changed[:, 5:] = torch.randint(3, 20, (2, 3))
    torch.testing.assert_close(model(src, tgt)[:, :5], model(src, changed)[:, :5])


@pytest.mark.parametrize("score", ["general", "additive"])
def test_step_by_step_decoding_equals_teacher_forcing(score):
    model = tiny(attention=score)
    src, tgt = torch.randint(3, 20, (2, 6)), torch.randint(3, 20, (2, 5))
    full = model(src, tgt)
    state = model.start_decoding(src, None, 5)
    for t in range(5):
        logits, state = model.decode_step(state, tgt[:, t])
        torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=0)


def test_reorder_state_selects_and_repeats_rows():
    model = tiny()
    src, tgt = torch.randint(3, 20, (3, 6)), torch.randint(3, 20, (3, 4))
    index = torch.tensor([2, 2, 0])
    state = model.reorder_state(model.start_decoding(src), index)
    for t in range(4):
        logits, state = model.decode_step(state, tgt[index, t])
    torch.testing.assert_close(logits, model(src, tgt)[index, -1], atol=1e-5, rtol=0)


def test_bad_sources_are_named():
    model = tiny()
    src = torch.randint(3, 20, (2, 4))
    with pytest.raises(ValueError, match="no tokens"):
        model(src, src, attention_mask=torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="right-padded"):
        model(src, src, attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="attention must be one of"):
        tiny(attention="dot-ish")
    with pytest.raises(ValueError, match="hidden_size=25 must be even"):
        tiny(hidden_size=25)


def test_save_load_round_trips_bit_for_bit(tmp_path):
    model = tiny(attention="additive")
    qkv.save_model(model, tmp_path)
    loaded, _ = qkv.load(tmp_path)
    assert isinstance(loaded, LSTMSeq2Seq) and loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_learns_to_reverse_short_sequences():
    """The attention has to find the right source position for every output token."""
    torch.manual_seed(0)
    model = tiny(d_model=32, hidden_size=64, num_layers=1).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        src = torch.randint(3, 20, (32, 6))
        out = src.flip(1)
        dec_in = torch.cat([torch.full((32, 1), BOS), out], 1)
        dec_out = torch.cat([out, torch.full((32, 1), EOS)], 1)
        loss = F.cross_entropy(model(src, dec_in).flatten(0, 1), dec_out.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    src = torch.randint(3, 20, (64, 6))
    dec_in = torch.cat([torch.full((64, 1), BOS), src.flip(1)], 1)
    accuracy = (model(src, dec_in)[:, :-1].argmax(-1) == src.flip(1)).float().mean()
    assert accuracy > 0.9, f"reversal accuracy {accuracy:.2f} after training"
