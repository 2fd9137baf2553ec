"""qkv.ViT against transformers' ViT, built from small random configs (several patch sizes,
channel counts and depths), plus the model's own properties and errors."""
import pytest
import torch
import transformers

import qkv
from qkv.config import ConfigError
from qkv.nn import interpolate_grid

CONFIGS = [  # (image, patch, channels, layers, qkv_bias)
    (28, 7, 1, 2, True),
    (16, 4, 3, 1, True),
    (32, 8, 3, 3, False),
]


def hf_config(image, patch, channels, layers, qkv_bias, num_labels=5):
    return transformers.ViTConfig(
        image_size=image, patch_size=patch, num_channels=channels, num_hidden_layers=layers,
        hidden_size=32, num_attention_heads=4, intermediate_size=48, qkv_bias=qkv_bias,
        num_labels=num_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


def perturbed(model):
    """transformers initialises LayerNorms to (1, 0) and zero biases: randomise everything so
    that a wrong mapping shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.parametrize("image,patch,channels,layers,qkv_bias", CONFIGS)
def test_classifier_matches_transformers(tmp_path, image, patch, channels, layers, qkv_bias):
    hf = perturbed(transformers.ViTForImageClassification(hf_config(image, patch, channels, layers, qkv_bias)))
    hf.save_pretrained(tmp_path)
    model = qkv.from_hf(tmp_path)
    assert isinstance(model, qkv.ViT) and model.config.num_labels == 5
    x = torch.randn(3, channels, image, image)
    with torch.no_grad():
        ref = hf(x).logits
        assert (model(x) - ref).abs().max() <= 1e-4
        assert (model.forward_features(x) - hf.vit(x).last_hidden_state).abs().max() <= 1e-4
        # a second resolution (and a non-square one), both against interpolate_pos_encoding=True
        for h, w in ((image + 2 * patch, image + 2 * patch), (image + patch, image + 3 * patch)):
            y = torch.randn(2, channels, h, w)
            ref = hf(y, interpolate_pos_encoding=True).logits
            assert (model(y, interpolate_pos_encoding=True) - ref).abs().max() <= 1e-4


def test_vit_model_with_pooler_matches_transformers(tmp_path):
    hf = perturbed(transformers.ViTModel(hf_config(28, 4, 1, 2, True)))
    hf.save_pretrained(tmp_path)
    model = qkv.from_hf(tmp_path)
    assert model.config.num_labels == 0 and model.config.pooler
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        out = hf(x)
        features = model.forward_features(x)
        assert (features - out.last_hidden_state).abs().max() <= 1e-4
        assert (model.pool(features) - out.pooler_output).abs().max() <= 1e-4


def test_save_hf_round_trips(tmp_path):
    config = qkv.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, num_labels=4,
                           class_names=["cat", "dog", "cow", "owl"], image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4])
    model = perturbed(qkv.ViT(config))
    model.save_hf(tmp_path)
    hf = transformers.AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert hf.config.id2label[2] == "cow"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() <= 1e-4
    back = qkv.from_hf(tmp_path)
    assert back.config.class_names == config.class_names and back.config.image_mean == config.image_mean
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name


def test_save_hf_refuses_a_qkv_bias_it_would_drop(tmp_path):
    config = qkv.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, num_labels=4, qkv_bias=False)
    model = perturbed(qkv.ViT(config))  # the frozen Q, K, V bias made non-zero
    with pytest.raises(qkv.config.ConfigError, match="qkv_bias=false, but layers.0.attn.c_attn.bias is not zero"):
        model.save_hf(tmp_path)
    with torch.no_grad():
        for block in model.layers:
            block.attn.c_attn.bias.zero_()  # as training leaves it (frozen at zero)
    model.save_hf(tmp_path)
    hf = transformers.AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() <= 1e-4


def test_save_load_round_trip_bit_for_bit(tmp_path):
    config = qkv.ViTConfig(**{**qkv.models.vit.PRESETS["vit-28-tiny"], "class_names": list("abcdefghij")})
    model = perturbed(qkv.ViT(config))
    qkv.save_model(model, tmp_path)
    loaded, tokenizer = qkv.load(tmp_path)
    assert tokenizer is None and isinstance(loaded, qkv.ViT) and loaded.config == config
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_mean_pooling_option():
    model = qkv.ViT(qkv.ViTConfig(**{**qkv.models.vit.PRESETS["vit-28-tiny"], "pool": "mean"})).eval()
    x = torch.randn(2, 1, 28, 28)
    features = model.forward_features(x)
    assert features.shape == (2, 1 + 16, 96)
    assert torch.allclose(model(x), model.classifier(features[:, 1:].mean(1)))
    with pytest.raises(ConfigError, match="pool"):
        model.save_hf("unused")


def test_interpolate_grid_keeps_cls_and_identity():
    table = torch.randn(1, 1 + 16, 8)
    assert interpolate_grid(table, (4, 4), (4, 4)) is table
    out = interpolate_grid(table, (4, 4), (6, 5))
    assert out.shape == (1, 1 + 30, 8) and torch.equal(out[:, 0], table[:, 0])


def test_bad_inputs_say_what_the_model_expects():
    model = qkv.ViT(qkv.ViTConfig(**qkv.models.vit.PRESETS["vit-28-tiny"]))
    with pytest.raises(ValueError, match="not divisible by the patch size 7"):
        model(torch.randn(1, 1, 30, 30), interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match="grey images with 1 channel"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="trained on 28x28 images, got 35x35.*interpolate_pos_encoding=True"):
        model(torch.randn(1, 1, 35, 35))
    with pytest.raises(ValueError, match="float tensor"):
        model(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        qkv.ViTConfig(image_size=30, patch_size=4)
    assert model(torch.randn(1, 1, 35, 35), interpolate_pos_encoding=True).shape == (1, 10)
