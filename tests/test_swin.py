"""qkv.Swin against transformers' Swin, built from small random configs (window sizes, depths,
heads, channel counts, inputs that need padding), the shifted-window mask checked by hand,
capture, the model's errors, and training through the image-classification task."""
import json
import tomllib

import pytest
import safetensors.torch
import torch
import transformers

import qkv
from qkv import data
from qkv.cli import main
from qkv.models.swin import PRESETS
from qkv.nn import capture, layer_names, relative_position_index, scaled_dot_product_attention, shifted_window_mask
from qkv.train.metrics import read_metrics

from .conftest import FIXTURES, ROOT

CONFIGS = {  # name: (image, patch, channels, embed_dim, depths, heads, window, qkv_bias, input sizes)
    # 14x14: four 7x7 windows, shift 3; then 7x7 = the window: one window, no shift
    "patch2-window7": (28, 2, 1, 16, [2, 2], [2, 4], 7, True, [(28, 28)]),
    # swin-28-tiny's shape: 7x7 padded to 8x8, window 4, shift 2; odd 7x7 merged to 4x4; a 30x26
    # image is padded to whole patches
    "window4-padded": (28, 4, 1, 8, [2, 2], [2, 2], 4, True, [(28, 28), (30, 26)]),
    # three stages of window 2 (8x8, 4x4, 2x2), no bias on Q/K/V
    "window2-3-stages": (32, 4, 3, 12, [2, 1, 2], [3, 3, 6], 2, False, [(32, 32)]),
    # 18x18 padded to 21x21 (window 7, shift 3), then 9x9 padded to 14x14
    "padded-18-and-9": (36, 2, 3, 16, [2, 2], [2, 4], 7, True, [(36, 36)]),
    # window 3 (shift 1), odd depth, one head
    "window3-odd-depth": (30, 3, 1, 8, [3, 2], [1, 2], 3, True, [(30, 30)]),
}


def hf_config(image, patch, channels, embed, depths, heads, window, qkv_bias, num_labels=5):
    config = transformers.SwinConfig(
        image_size=image, patch_size=patch, num_channels=channels, embed_dim=embed, depths=depths,
        num_heads=heads, window_size=window, qkv_bias=qkv_bias, num_labels=num_labels, mlp_ratio=2.0,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0,
    )
    config._attn_implementation = "eager"  # so that it returns attention weights
    return config


def perturbed(model):
    """Randomise every parameter (LayerNorms start at (1, 0), biases and Swin's relative
    position tables at 0 in transformers) so that a wrong mapping shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name", CONFIGS)
def test_classifier_matches_transformers(tmp_path, name):
    *shape, sizes = CONFIGS[name]
    perturbed(transformers.SwinForImageClassification(hf_config(*shape))).save_pretrained(tmp_path)
    model = qkv.from_hf(tmp_path)
    assert isinstance(model, qkv.Swin) and model.config.num_labels == 5 and model.config.qkv_bias == shape[-1]
    for h, w in sizes:
        # a fresh transformers model per size: its SwinLayer keeps a shrunk window once it has seen a small grid
        hf = transformers.SwinForImageClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
        x = torch.randn(3, shape[2], h, w)
        with torch.no_grad():
            out = hf(x, output_attentions=True)
            attentions = []
            features = model.forward_features(x, attentions=attentions)
            assert (model.forward_head(features) - out.logits).abs().max() <= 1e-4
            assert (features - hf.swin(x).last_hidden_state).abs().max() <= 1e-4
            assert (model(x) - out.logits).abs().max() <= 1e-4  # the fused (SDPA) path
        last_blocks = [sum(shape[4][:i + 1]) - 1 for i in range(len(shape[4]))]  # HF returns each stage's last
        for i, theirs in zip(last_blocks, out.attentions, strict=True):
            assert attentions[i].shape == theirs.shape and (attentions[i] - theirs).abs().max() <= 1e-5


def test_swin_model_matches_transformers(tmp_path):
    perturbed(transformers.SwinModel(hf_config(28, 2, 3, 16, [2, 2], [2, 4], 7, True))).save_pretrained(tmp_path)
    hf = transformers.SwinModel.from_pretrained(tmp_path).eval()
    model = qkv.from_hf(tmp_path)
    assert model.config.num_labels == 0
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        out = hf(x)
        assert (model.forward_features(x) - out.last_hidden_state).abs().max() <= 1e-4
        assert (model(x) - out.pooler_output).abs().max() <= 1e-4  # no head: the pooled features


def test_reads_module_names_and_skips_old_index_buffers(tmp_path):
    """transformers 5's own module names (attention.q_proj, mlp.fc1, ...: a state_dict() saved
    as is) and the relative_position_index buffers older checkpoints carry."""
    hf = perturbed(transformers.SwinForImageClassification(hf_config(28, 4, 1, 8, [2, 2], [2, 2], 4, True)))
    hf.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert "swin.encoder.layers.0.blocks.0.attention.q_proj.weight" in state
    state["swin.encoder.layers.0.blocks.0.attention.self.relative_position_index"] = torch.zeros(16 * 16)
    safetensors.torch.save_file(state, str(tmp_path / "model.safetensors"))
    model = qkv.from_hf(tmp_path)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() <= 1e-4


def test_save_hf_round_trips(tmp_path):
    config = qkv.SwinConfig(image_size=16, patch_size=2, num_channels=3, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                            window_size=4, num_labels=4, qkv_bias=False, class_names=["cat", "dog", "cow", "owl"],
                            image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4])
    model = perturbed(qkv.Swin(config))
    with pytest.raises(qkv.config.ConfigError, match="qkv_bias=false, but layers.0.blocks.0.attn.c_attn.bias"):
        model.save_hf(tmp_path)
    with torch.no_grad():
        for block in (b for stage in model.layers for b in stage.blocks):
            block.attn.c_attn.bias.zero_()  # as training leaves it (frozen at zero)
    model.save_hf(tmp_path)
    hf = transformers.AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(hf, transformers.SwinForImageClassification) and hf.config.id2label[2] == "cow"
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["image_std"] == [0.2, 0.3, 0.4]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() <= 1e-4
    back = qkv.from_hf(tmp_path)
    assert back.config == config
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_save_load_round_trip_bit_for_bit(tmp_path):
    config = qkv.SwinConfig(**{**PRESETS["swin-28-tiny"], "class_names": list("abcdefghij")})
    model = perturbed(qkv.Swin(config))
    qkv.save_model(model, tmp_path)
    loaded, tokenizer = qkv.load(tmp_path)
    assert tokenizer is None and isinstance(loaded, qkv.Swin) and loaded.config == config
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_shifted_window_mask_by_hand():
    # A 4x4 grid rolled up-left by 1, windows of 2x2. Along each axis rows 0-1 are region 0, row 2
    # region 1, row 3 region 2 (row 3 holds the old row 0, wrapped around). Tokens of a window are
    # numbered row-major: 0 1 / 2 3.
    mask = shifted_window_mask(4, 4, 2, 1)
    assert mask.shape == (4, 4, 4) and mask.dtype == torch.bool
    everyone = torch.ones(4, 4, dtype=torch.bool)
    columns_apart = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    rows_apart = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0], everyone)       # top-left window: all region 0
    assert torch.equal(mask[1], columns_apart)  # top-right: column 2 (old 3) and column 3 (old 0) apart
    assert torch.equal(mask[2], rows_apart)     # bottom-left: the same for rows
    assert torch.equal(mask[3], torch.eye(4, dtype=torch.bool))  # the four old corners: each alone
    assert shifted_window_mask(4, 4, 2, 1).sum() == 16 + 8 + 8 + 4


def test_relative_position_index_by_hand():
    # 2x2 window, table rows (dy + 1) * 3 + (dx + 1) for the offset (dy, dx) = query - key
    assert relative_position_index(2).tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    # the same offsets in the 5x5 table of a 3x3 window: (dy + 2) * 5 + (dx + 2)
    assert relative_position_index(2, 3).tolist() == [[12, 11, 7, 6], [13, 12, 8, 7], [17, 16, 12, 11], [18, 17, 13, 12]]


def test_attention_bias_on_both_paths():
    q, k, v = torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 8)
    bias = torch.randn(1, 2, 5, 5)
    mask = torch.rand(3, 1, 5, 5) > 0.3
    mask[..., 0] = True  # every query keeps a key
    ref = ((q @ k.transpose(-2, -1)) / 8**0.5 + bias).masked_fill(~mask, float("-inf")).softmax(-1)
    fused, none = scaled_dot_product_attention(q, k, v, mask, bias=bias)
    explicit, weights = scaled_dot_product_attention(q, k, v, mask, bias=bias, need_weights=True)
    assert none is None and (weights - ref).abs().max() <= 1e-6
    assert (fused - ref @ v).abs().max() <= 1e-5 and (explicit - ref @ v).abs().max() <= 1e-5
    causal, _ = scaled_dot_product_attention(q, k, v, bias=bias, is_causal=True)
    ref = ((q @ k.transpose(-2, -1)) / 8**0.5 + bias).masked_fill(~torch.ones(5, 5).tril().bool(), float("-inf"))
    assert (causal - ref.softmax(-1) @ v).abs().max() <= 1e-5


def test_capture_returns_window_maps_and_changes_nothing():
    model = perturbed(qkv.Swin(qkv.SwinConfig(**PRESETS["swin-28-tiny"])))
    x = torch.randn(2, 1, 28, 28)
    names = layer_names(model)
    assert names["hidden"] == [f"layers.{s}.blocks.{b}" for s in range(2) for b in range(2)]
    with torch.no_grad():
        plain = model(x)
        with capture(model, hidden="*") as seen:
            captured = model(x)
    assert (captured - plain).abs().max() <= 1e-5
    maps = seen.maps()
    # 7x7 -> 8x8: 4 windows of 4x4 per image; then 4x4: one window (no shift)
    assert [tuple(w.shape) for w in maps] == [(8, 2, 16, 16)] * 2 + [(2, 4, 16, 16)] * 2
    assert all(torch.allclose(w.sum(-1), torch.ones(())) for w in maps)
    allowed = shifted_window_mask(8, 8, 4, 2).repeat(2, 1, 1)[:, None].expand(-1, 2, -1, -1)
    assert torch.all(maps[1][~allowed] == 0) and torch.all(maps[1][allowed] > 0)  # SW-MSA: masked pairs get 0
    assert torch.all(maps[0] > 0) and torch.all(maps[2] > 0) and torch.all(maps[3] > 0)  # W-MSA: no mask
    assert [tuple(calls[0].shape) for calls in seen.hidden.values()] == [(2, 49, 32)] * 2 + [(2, 16, 64)] * 2
    assert all(m.captured is None for m in model.modules() if hasattr(m, "captured"))


def test_a_window_smaller_than_the_table_reads_its_centre():
    """A 4x4 grid with window 7 (transformers fails here) computes what window 4 computes with
    the centre 7x7 of the 13x13 table: the same offsets, the same biases."""
    big = perturbed(qkv.Swin(qkv.SwinConfig(image_size=8, patch_size=2, num_channels=1, embed_dim=8, depths=[2],
                                            num_heads=[2], window_size=7, num_labels=3)))
    small = qkv.Swin(qkv.SwinConfig(**{**big.config.__dict__, "window_size": 4})).eval()
    state = big.state_dict()
    for name, table in state.items():
        if name.endswith("relative_position_bias_table"):
            state[name] = table.view(13, 13, -1)[3:10, 3:10].reshape(49, -1)
    small.load_state_dict(state)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(big(x), small(x))


def test_bad_inputs_say_what_the_model_expects():
    model = qkv.Swin(qkv.SwinConfig(**PRESETS["swin-28-tiny"]))
    with pytest.raises(ValueError, match="grey images with 1 channel"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="float tensor"):
        model(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"image size 3x28 is smaller than one 4x4 patch.*trained at 28x28"):
        model(torch.randn(1, 1, 3, 28))
    assert model(torch.randn(1, 1, 33, 47)).shape == (1, 10)  # any size of at least one patch: padded
    with pytest.raises(ValueError, match=r"stage 1 is 64 wide, not divisible by num_heads\[1\]=3"):
        qkv.SwinConfig(embed_dim=32, depths=[2, 2], num_heads=[2, 3])
    with pytest.raises(ValueError, match="one positive entry per stage"):
        qkv.SwinConfig(depths=[2, 2], num_heads=[2])
    with pytest.raises(qkv.config.ConfigError, match="absolute position embeddings"):
        qkv.interop.swin.config_from_hf({"use_absolute_embeddings": True}, has_head=False)


@pytest.fixture(scope="module")
def fashion_data(data_root):
    data.get("fashion-mnist", source=FIXTURES / "fashion-mnist", log=lambda *a: None)
    return data_root


def test_image_classification_trains_swin_unchanged(fashion_data, tmp_path):
    out = tmp_path / "swin"
    args = ["train", str(ROOT / "configs" / "vit-fashion-mnist.toml"), "--no-progress", "--set", f"out_dir={out}"]
    for item in ("model.preset=swin-28-tiny", "model.embed_dim=16", "train.batch_size=16", "train.max_steps=4",
                 "train.warmup_steps=2", "train.log_interval=1", "train.eval_interval=2", "train.eval_batches=1",
                 "train.ckpt_interval=2"):
        args += ["--set", item]
    assert main(args) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if "val_acc" in r] == [2, 4]
    model, tokenizer = qkv.load(out)
    assert isinstance(model, qkv.Swin) and tokenizer is None and model.config.embed_dim == 16
    assert model.config.class_names[0] == "T-shirt/top" and 0.1 < model.config.image_mean[0] < 0.5


def test_swin_config_matches_the_vit_one():
    """configs/swin-fashion-mnist.toml: the same data, augmentation and budget as the ViT's."""
    swin, vit = (tomllib.loads((ROOT / "configs" / f"{m}-fashion-mnist.toml").read_text()) for m in ("swin", "vit"))
    assert swin["data"] == vit["data"] and swin["train"] == vit["train"] and swin["seed"] == vit["seed"]
    assert swin["model"] == {**vit["model"], "preset": "swin-28-tiny"}
