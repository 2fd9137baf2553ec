"""qkv.analysis: every measure against a hand-computed case, captured attention against
transformers' output_attentions, and `qkv analyze` end to end on tiny trained runs."""
import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import qkv
from qkv import data
from qkv.analysis import (MinibatchCKA, attention_rollout, capture, cka, mean_attention_distance,
                          position_similarity, text_maps)
from qkv.analysis.measures import TOKEN_PATTERNS, token_pattern_attention
from qkv.cli import main

from .conftest import CHAR_CONFIG, FIXTURES, ROOT, TINY


# -- the measures, by hand ------------------------------------------------------------------

def test_rollout_of_two_layers_by_hand():
    a1 = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]])
    a2 = torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 1.0]])
    # (A + I) with rows renormalised: (A1 + I)/2 and (A2 + I)/2; rollout = Â2 Â1
    want = torch.tensor([[0.625, 0.375, 0.0], [0.625, 0.375, 0.0], [0.1, 0.15, 0.75]])
    got = attention_rollout([a1[None, None], a2[None, None]])
    torch.testing.assert_close(got[0], want)
    assert torch.allclose(got.sum(-1), torch.ones(1, 3))  # every row is a distribution


def test_rollout_is_batched_and_fuses_heads():
    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(3, 4, 5, 5, generator=g).softmax(-1) for _ in range(3)]
    together = attention_rollout(maps, "max")
    for b in range(3):  # each sample as if alone
        torch.testing.assert_close(together[b], attention_rollout([m[b:b + 1] for m in maps], "max")[0])
    one_layer = attention_rollout(maps[:1], "min")[0]
    fused = maps[0][0].min(0).values + torch.eye(5)
    torch.testing.assert_close(one_layer, fused / fused.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout(maps, "median")


def test_rollout_discard_keeps_the_cls_column():
    a = torch.tensor([[[[0.1, 0.6, 0.3], [0.05, 0.9, 0.05], [0.02, 0.08, 0.9]]]])
    got = attention_rollout([a], discard_ratio=0.34)[0]  # the 2 weakest of the 6 off the [CLS] column go
    fused = torch.tensor([[0.1, 0.6, 0.3], [0.05, 0.9, 0.0], [0.02, 0.0, 0.9]]) + torch.eye(3)
    torch.testing.assert_close(got, fused / fused.sum(-1, keepdim=True))


def test_mean_attention_distance_on_one_hot_maps():
    # a 2x2 grid of 10-pixel patches behind a [CLS] token; head 0 looks at itself, head 1 at
    # the diagonally opposite patch, head 2 at its right/left neighbour
    opposite, neighbour = [3, 2, 1, 0], [1, 0, 3, 2]
    maps = torch.zeros(1, 3, 5, 5)
    maps[0, :, :, 0] = 0.5  # weight on [CLS] is left out and the rest renormalised
    for q in range(4):
        maps[0, 0, 1 + q, 1 + q] = 0.5
        maps[0, 1, 1 + q, 1 + opposite[q]] = 0.5
        maps[0, 2, 1 + q, 1 + neighbour[q]] = 0.5
    got = mean_attention_distance([maps, maps], (2, 2), patch_size=10)
    torch.testing.assert_close(got, torch.tensor([[0.0, 200 ** 0.5, 10.0]] * 2))


def test_cka_identity_invariances_and_not_any_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 10, generator=g)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g))
    assert cka(x, x) == pytest.approx(1.0)
    assert cka(x, 3.5 * x @ q) == pytest.approx(1.0)           # orthogonal map and isotropic scaling
    assert cka(x, x @ torch.randn(10, 10, generator=g)) < 0.95  # an arbitrary linear map changes it
    assert cka(x, torch.randn(60, 7, generator=g)) < 0.5
    batches = MinibatchCKA(2, 1)
    for _ in range(4):
        b = torch.randn(32, 10, generator=g)
        batches.update([b, torch.randn(32, 5, generator=g)], [2 * b @ q])
    got = batches.compute()
    assert got[0, 0].item() == pytest.approx(1.0) and got[1, 0].item() < 0.3


def test_position_similarity_grid():
    pos = torch.randn(1, 1 + 9, 16)
    pos[0, 1 + 4] = pos[0, 1 + 0]  # the centre patch's embedding equals the corner's
    sim = position_similarity(pos, (3, 3))
    assert sim.shape == (3, 3, 3, 3)
    assert torch.allclose(sim[1, 1, 1, 1], torch.tensor(1.0)) and torch.allclose(sim[1, 1, 0, 0], torch.tensor(1.0))
    torch.testing.assert_close(sim[0, 2, 2, 1], sim[2, 1, 0, 2])  # symmetric



def test_token_pattern_attention_by_hand():
    # 4 tokens: [CLS] a b [SEP]; head 0 attends to the previous token, head 1 half to [CLS], half to itself
    prev = torch.tensor([[1.0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    mixed = torch.tensor([[1.0, 0, 0, 0], [1, 0, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 1]])
    profile = token_pattern_attention([torch.stack([prev, mixed])[None]])
    assert TOKEN_PATTERNS == ("previous", "next", "self", "[CLS]", "[SEP]")
    torch.testing.assert_close(profile[0, 0], torch.tensor([1.0, 0, 0, 0.5, 0]))   # a -> [CLS] is also "previous"
    torch.testing.assert_close(profile[0, 1], torch.tensor([0.5, 0, 0.25, 0.75, 0]))  # a -> [CLS] again
    with pytest.raises(ValueError, match="no token between"):
        token_pattern_attention([torch.ones(1, 1, 2, 2)])

# -- captured attention equals transformers' output_attentions -------------------------------

def _randomised(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _same_maps(ours: list, theirs, what: str):
    assert len(ours) == len(theirs) > 0, what
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=what)


def test_gpt2_and_bert_attention_equal_transformers(tmp_path):
    torch.manual_seed(0)
    gpt2 = _randomised(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4, attn_implementation="eager")))
    bert = _randomised(transformers.BertModel(transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
        attn_implementation="eager")))
    ids = torch.randint(1, 50, (2, 9))
    for name, hf in (("gpt2", gpt2), ("bert", bert)):
        hf.save_pretrained(tmp_path / name)
        model = qkv.from_hf(tmp_path / name)
        with capture(model) as seen:
            features = model.forward_features(ids)
        torch.testing.assert_close(features, model.forward_features(ids), atol=1e-5, rtol=1e-5)  # no change
        _same_maps(seen.maps(), hf(ids, output_attentions=True).attentions, name)


def test_vit_attention_equals_transformers(tmp_path):
    torch.manual_seed(0)
    hf = _randomised(transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, num_labels=3, attn_implementation="eager")))
    hf.save_pretrained(tmp_path)
    model = qkv.from_hf(tmp_path)
    x = torch.randn(2, 3, 16, 16)
    with capture(model) as seen:
        logits = model(x)
    torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=1e-5)
    _same_maps(seen.maps(), hf(pixel_values=x, output_attentions=True).attentions, "vit")


def test_marian_encoder_decoder_and_cross_attention_equal_transformers(tmp_path):
    torch.manual_seed(0)
    hf = transformers.MarianMTModel(transformers.MarianConfig(
        vocab_size=40, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, max_position_embeddings=32,
        pad_token_id=0, eos_token_id=2, decoder_start_token_id=0, attn_implementation="eager")).eval()
    hf.save_pretrained(tmp_path)
    model = qkv.from_hf(tmp_path)
    src = torch.randint(3, 40, (2, 7))
    mask = torch.ones_like(src)
    mask[1, 5:] = 0  # padding in the source
    tgt = torch.randint(3, 40, (2, 5))
    with capture(model) as seen:
        model(src, tgt, attention_mask=mask)
    out = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt, output_attentions=True)
    _same_maps(seen.maps("encoder.*"), out.encoder_attentions, "encoder self-attention")
    _same_maps(seen.maps("decoder.*.attn"), out.decoder_attentions, "decoder self-attention")
    _same_maps(seen.maps("*crossattention"), out.cross_attentions, "cross-attention")


def test_capture_says_what_it_can_select():
    model = qkv.models.build("gpt", vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16)
    with pytest.raises(ValueError, match="layer_names"):
        with capture(model, "nothing.*"):
            pass
    assert qkv.analysis.layer_names(model)["attentions"] == ["transformer.h.0.attn", "transformer.h.1.attn"]
    with capture(model, "transformer.h.1.attn", hidden="*") as seen:
        model(torch.zeros(1, 4, dtype=torch.long))
    assert list(seen.attentions) == ["transformer.h.1.attn"] and len(seen.hidden) == 2
    assert all(m.captured is None for m in model.modules() if hasattr(m, "captured"))  # restored


# -- qkv analyze on tiny trained runs --------------------------------------------------------

@pytest.fixture(scope="module")
def lm_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze") / "lm"
    args = ["train", str(CHAR_CONFIG), "--no-progress", *[a for kv in (*TINY, f"out_dir={out}", "train.max_steps=2")
                                                          for a in ("--set", kv)]]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def vit_runs(data_root, tmp_path_factory):
    data.get("fashion-mnist", source=FIXTURES / "fashion-mnist", log=lambda *a: None)
    runs = []
    for name, seed in (("a", 1), ("b", 2)):
        out = tmp_path_factory.mktemp("analyze") / f"vit-{name}"
        tiny = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
                "model.intermediate_size=64", "train.batch_size=16", "train.max_steps=2", "train.eval_batches=1",
                f"seed={seed}", f"out_dir={out}"]
        assert main(["train", str(ROOT / "configs" / "vit-fashion-mnist.toml"), "--no-progress",
                     *[a for kv in tiny for a in ("--set", kv)]]) == 0
        runs.append(out)
    return runs


def test_attention_of_a_language_model(lm_run, tmp_path, capsys):
    assert main(["analyze", str(lm_run), "attention", "--text", "ROMEO: hi", "--layer", "0",
                 "--out", str(tmp_path)]) == 0
    png = tmp_path / "attention-layer0.png"
    assert str(png) in capsys.readouterr().out and png.stat().st_size > 1000
    numbers = json.loads((tmp_path / "attention-layer0.json").read_text())
    weights = np.array(numbers["weights"])
    assert weights.shape == (2, 9, 9) and numbers["queries"][0] == "R"
    assert np.allclose(np.triu(weights, 1), 0, atol=1e-6)  # causal: nothing from the future
    assert np.allclose(weights.sum(-1), 1, atol=1e-4)
    model, tokenizer = qkv.load(lm_run)
    assert len(text_maps(model, tokenizer, "ROMEO").layers) == 2


def test_cross_attention_of_a_translation_run(data_root, tmp_path, capsys):
    from .test_translation import TINY as MT_TINY, CONFIG as MT_CONFIG

    data.get("bible-en-de", source=FIXTURES / "bible" / "bible.db", log=lambda *a: None)
    run = tmp_path / "mt"
    qkv.train.train(MT_CONFIG, [*MT_TINY, "train.max_steps=1", f"out_dir={run}"], progress=False)
    assert main(["analyze", str(run), "attention", "--src", "In the beginning", "--tgt", "Im Anfang"]) == 0
    numbers = json.loads((run / "analysis" / "attention-layer0.json").read_text())
    weights = np.array(numbers["weights"])  # heads x target tokens (BOS first) x source tokens (EOS last)
    assert weights.shape == (2, len(numbers["queries"]), len(numbers["keys"])) and numbers["layer"].endswith("crossattention")
    assert np.allclose(weights.sum(-1), 1, atol=1e-4)
    assert main(["analyze", str(run), "attention", "--text", "x"]) == 2
    assert "needs --src" in capsys.readouterr().err


def test_rollout_positions_distance_and_cka_of_vits(vit_runs, tmp_path, capsys):
    a, b = vit_runs
    image = tmp_path / "boot.png"
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(image)
    assert main(["analyze", str(a), "rollout", str(image), "--discard-ratio", "0.5"]) == 0
    heat = np.array(json.loads((a / "analysis" / "rollout-boot.json").read_text())["cls_rollout"])
    assert heat.shape == (4, 4) and (heat >= 0).all()  # patch 7: a 4x4 grid
    assert main(["analyze", str(a), "positions"]) == 0
    sim = np.array(json.loads((a / "analysis" / "positions.json").read_text())["similarity"])
    assert sim.shape == (4, 4, 4, 4) and np.allclose(sim[2, 3, 2, 3], 1)
    assert main(["analyze", str(a), "distance", "--split", "val", "--count", "20"]) == 0
    dist = np.array(json.loads((a / "analysis" / "distance-val.json").read_text())["distance_px"])
    assert dist.shape == (2, 2) and (dist > 0).all() and (dist < 28 * 2 ** 0.5).all()
    assert main(["analyze", "cka", str(a), str(b), "--count", "24", "--out", str(tmp_path)]) == 0
    matrix = np.array(json.loads(next(tmp_path.glob("cka-*.json")).read_text())["cka"])
    assert matrix.shape == (2, 2) and ((matrix > 0) & (matrix <= 1 + 1e-6)).all()
    assert main(["analyze", "cka", str(a), str(a), "--count", "24", "--out", str(tmp_path / "same")]) == 0
    same = np.array(json.loads(next((tmp_path / "same").glob("cka-*.json")).read_text())["cka"])
    assert np.allclose(np.diag(same), 1)  # a model against itself
    capsys.readouterr()


def test_analyze_usage_errors(vit_runs, lm_run, capsys):
    a, _ = vit_runs
    with pytest.raises(SystemExit):
        main(["analyze", str(a), "positions", "--text", "x"])
    assert "positions does not take --text" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["analyze", str(a), "wobble"])
    assert main(["analyze", str(lm_run), "positions"]) == 2
    assert "needs an image model" in capsys.readouterr().err
    assert main(["analyze", str(lm_run), "attention", "--text", "ROMEO", "--layer", "7"]) == 2
    assert "--layer 7 is out of range" in capsys.readouterr().err


def test_cka_of_a_vit_against_a_cnn_and_what_a_windowed_model_cannot_give(vit_runs, tmp_path, capsys):
    from qkv.analysis import hidden_states

    vit, _ = qkv.load(vit_runs[0])
    resnet = qkv.models.build("resnet-28-small").eval()
    x = torch.randn(8, 1, 28, 28)
    feats_vit, feats_cnn = hidden_states(vit, x), hidden_states(resnet, x)
    assert len(feats_vit) == 2 and len(feats_cnn) == sum(resnet.config.depths)  # one per residual block
    both = MinibatchCKA(len(feats_vit), len(feats_cnn))
    both.update(feats_vit, feats_cnn)
    assert both.compute().shape == (2, len(feats_cnn))
    swin_run = tmp_path / "swin"
    qkv.save_model(qkv.models.build("swin-28-tiny"), swin_run)
    assert main(["analyze", str(swin_run), "positions"]) == 2
    assert "a 'swin' model has none" in capsys.readouterr().err
    assert main(["analyze", str(swin_run), "bias"]) == 0  # each block's relative position bias, per head
    tables = json.loads((swin_run / "analysis" / "relative-position-bias.json").read_text())
    swin = qkv.load(swin_run).model
    assert list(tables) == [f"layers.{s}.blocks.{b}" for s in (0, 1) for b in (0, 1)]
    block = swin.layers[1].blocks[0]
    assert np.array(tables["layers.1.blocks.0"]).shape == (4, 7, 7)  # 4 heads, window 4: offsets -3..3
    centre = block.relative_position_bias_table[block.relative_position_index[0, 0]]  # dy = dx = 0
    assert np.allclose(np.array(tables["layers.1.blocks.0"])[:, 3, 3], centre.detach().numpy(), atol=1e-5)
    right = block.relative_position_bias_table[block.relative_position_index[0, 1]]  # key one column right
    assert np.allclose(np.array(tables["layers.1.blocks.0"])[:, 3, 4], right.detach().numpy(), atol=1e-5)
    assert main(["analyze", str(vit_runs[0]), "bias"]) == 2
    assert "has no relative position bias" in capsys.readouterr().err
