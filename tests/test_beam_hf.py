"""qkv's beam search against Hugging Face's (``generate(num_beams=...)``), on a tiny random
MarianMTModel loaded with ``qkv.from_hf``: the same tokens for every sentence of a padded batch.

What is compared, and why these settings:

* ``early_stopping=True``: a sentence is done once it has ``num_beams`` finished hypotheses,
  which is fairseq's rule and qkv's. (HF's default ``False`` keeps searching while a live
  beam could still win; ``"never"`` is the textbook search. Neither is what qkv does.)
* Otherwise the two searches are the same algorithm: each step keeps the 2B best extensions
  per sentence, ends a hypothesis only when its EOS is among the B best, continues the B best
  non-EOS ones, and at ``max_new_tokens`` finishes the live hypotheses as they stand; a
  hypothesis' length counts its EOS; the best normalised score wins.
* Length penalty: qkv divides the summed log-probability by GNMT's ((5 + |Y|) / 6)^alpha, HF
  by |Y|^alpha. With alpha = 0 both rank by the raw sum: compared as qkv ships. For alpha 0.6
  and 1.0, qkv's ``length_penalty`` is swapped for HF's |Y|^alpha (monkeypatch), so the search
  itself (what is pruned, when a sentence stops, which finished hypothesis wins) is compared
  under one scoring. (With qkv's own penalty, three of these four settings give other answers
  here: the monkeypatch is what makes them comparable.)
* The model: MarianConfig's ``forced_eos_token_id`` default (0) would force a token at the
  last step, which qkv never does, so it is None; the decoder starts from the pad token, as
  Marian's do; weights are drawn larger than Marian's init (``init_std``, embeddings) so the
  output depends on the source, and EOS gets a logit bias of +3 so that hypotheses end at
  many lengths, some only at ``max_new_tokens``. The seed is one where the six settings give
  five different answers and no two best finished hypotheses tie (the closest are 1.5e-3
  apart in score, far above float noise).

Each HF score is checked too: ``sequences_scores`` equals the summed log-probability of its
hypothesis under qkv's model divided by |Y|^alpha (the lengths are counted alike).
"""
import importlib

import pytest
import torch
import transformers

import qkv
from qkv.inference import translate

V, PAD, EOS, N = 100, 0, 2, 16  # vocabulary, pad = decoder start, EOS, max_new_tokens
SETTINGS = [(beam, alpha) for beam in (2, 4) for alpha in (0.0, 0.6, 1.0)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(12)
    config = transformers.MarianConfig(
        vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, forced_eos_token_id=None,
        dropout=0.0, activation_function="swish", scale_embedding=True, init_std=0.2)
    hf = transformers.MarianMTModel(config).eval()
    with torch.no_grad():
        hf.model.shared.weight.normal_(std=0.2)
        hf.final_logits_bias.normal_()
        hf.final_logits_bias[0, EOS] += 3.0
    path = tmp_path_factory.mktemp("marian")
    hf.save_pretrained(path)
    return hf, qkv.from_hf(path)


def sources():
    """Four sources of 9, 6, 3 and 7 tokens, right-padded."""
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([9, 6, 3, 7])
    mask = (torch.arange(9)[None] < lengths[:, None]).long()
    return torch.randint(3, V, (4, 9), generator=g).masked_fill(mask == 0, PAD), mask


def hf_beam(hf, src, mask, beam, alpha):
    """HF's best hypothesis per source (without decoder start and EOS) and its score."""
    out = hf.generate(src, attention_mask=mask, num_beams=beam, length_penalty=alpha, max_new_tokens=N,
                      early_stopping=True, do_sample=False, return_dict_in_generate=True, output_scores=True)
    rows = out.sequences[:, 1:].tolist()
    return [row[:row.index(EOS)] if EOS in row else row for row in rows], out.sequences_scores.tolist()


def score(model, src, mask, hyp, alpha):
    """log P(hyp, then EOS unless it ran to N tokens) under ``model``, / |Y|^alpha."""
    target = hyp + [EOS] if len(hyp) < N else hyp
    with torch.no_grad():
        logits = model(src[None], torch.tensor([[PAD] + target[:-1]]), attention_mask=mask[None])
    logp = logits[0].log_softmax(-1)[torch.arange(len(target)), target].sum().item()
    return logp / len(target) ** alpha


@pytest.mark.parametrize("beam,alpha", SETTINGS)
def test_beam_search_equals_transformers(models, monkeypatch, beam, alpha):
    hf, model = models
    src, mask = sources()
    want, hf_scores = hf_beam(hf, src, mask, beam, alpha)
    if alpha:
        search = importlib.import_module("qkv.inference.translate")  # the module, not the function
        monkeypatch.setattr(search, "length_penalty", lambda length, alpha: length ** alpha)
    got = translate(model, src, mask, beam=beam, length_penalty=alpha, max_new_tokens=N)
    assert len(got) == len(want) == 4
    for row, (ours, theirs, hf_score) in enumerate(zip(got, want, hf_scores)):
        assert hf_score == pytest.approx(score(model, src[row], mask[row], theirs, alpha), abs=1e-4), row
        ours_score = score(model, src[row], mask[row], ours, alpha)
        assert ours == theirs, (f"source {row}: qkv {ours} (score {ours_score:.5f}) "
                                f"!= transformers {theirs} (score {hf_score:.5f})")


def test_the_settings_give_different_answers_of_many_lengths(models):
    """Guards the fixture: if a change of init made every setting agree trivially (say, all
    hypotheses EOS at once), the comparison above would prove little."""
    hf, _ = models
    src, mask = sources()
    answers = [hf_beam(hf, src, mask, beam, alpha)[0] for beam, alpha in SETTINGS]
    assert len({str(a) for a in answers}) >= 4
    lengths = {len(hyp) for answer in answers for hyp in answer}
    assert N in lengths and 0 in lengths and len(lengths) >= 5, lengths
