"""qkv's ResNet against transformers' ResNet on small random configs (basic and bottleneck
blocks, several depths, widths and channel counts, batch-norm statistics perturbed), its
own round trips and errors, and the image-classification task training it unchanged."""
import json

import pytest
import torch
import transformers

import qkv
from qkv import data
from qkv.cli import main
from qkv.config import ConfigError
from qkv.models.resnet import PRESETS, ResNet, ResNetConfig
from qkv.train import evaluate_run
from qkv.train.metrics import read_metrics

from .conftest import FIXTURES, ROOT, perturbed

CONFIGS = [  # transformers.ResNetConfig fields; image size, channels
    (dict(layer_type="basic", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2]), 32, 1),
    (dict(layer_type="basic", embedding_size=12, hidden_sizes=[16, 24, 32], depths=[2, 1, 2],
          downsample_in_first_stage=True, hidden_act="gelu"), 48, 3),
    (dict(layer_type="bottleneck", embedding_size=8, hidden_sizes=[16, 32, 24], depths=[2, 1, 1]), 40, 3),
    (dict(layer_type="bottleneck", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 3],
          downsample_in_bottleneck=True), 36, 1),
]
IDS = ["basic-1ch", "basic-gelu-3ch", "bottleneck-3ch", "bottleneck-down1x1-1ch"]




@pytest.mark.parametrize("fields,image,channels", CONFIGS, ids=IDS)
def test_classifier_matches_transformers(tmp_path, fields, image, channels):
    hf = perturbed(transformers.ResNetForImageClassification(
        transformers.ResNetConfig(num_channels=channels, num_labels=5, **fields)))
    hf.save_pretrained(tmp_path)
    model = qkv.from_hf(tmp_path)
    assert isinstance(model, ResNet) and model.config.num_labels == 5 and model.config.stem == "7x7"
    x = torch.randn(3, channels, image, image)
    with torch.no_grad():
        ref = hf(x).logits
        features, out = model.forward_features(x), hf.resnet(x)
        diffs = {"logits": (model(x) - ref).abs().max().item(),
                 "features": (features - out.last_hidden_state).abs().max().item(),
                 "pooled": (model.pool(features) - out.pooler_output.flatten(1)).abs().max().item()}
    print("max |qkv - transformers|", diffs)
    assert max(diffs.values()) <= 1e-4 and ref.abs().max() > 0.1  # not trivially small
    y = torch.randn(2, channels, image + 8, image - 4)  # a CNN takes other (non-square) sizes as they are
    with torch.no_grad():
        assert (model(y) - hf(y).logits).abs().max() <= 1e-4


def test_resnet_model_without_head_matches_transformers(tmp_path):
    fields, image, channels = CONFIGS[2]
    hf = perturbed(transformers.ResNetModel(transformers.ResNetConfig(num_channels=channels, **fields)))
    hf.save_pretrained(tmp_path)
    model = qkv.from_hf(tmp_path)
    assert model.config.num_labels == 0
    x = torch.randn(2, channels, image, image)
    with torch.no_grad():
        out = hf(x)
        assert (model.forward_features(x) - out.last_hidden_state).abs().max() <= 1e-4
        assert (model(x) - out.pooler_output.flatten(1)).abs().max() <= 1e-4  # no head: the pooled features


def test_save_hf_round_trips(tmp_path):
    config = ResNetConfig(image_size=32, num_channels=3, embedding_size=8, hidden_sizes=[16, 32], depths=[2, 1],
                          num_labels=4, class_names=["cat", "dog", "cow", "owl"],
                          image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4])
    model = perturbed(ResNet(config))
    model.save_hf(tmp_path)
    hf = transformers.AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(hf, transformers.ResNetForImageClassification) and hf.config.id2label[2] == "cow"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() <= 1e-4
    back = qkv.from_hf(tmp_path)
    assert back.config == config  # image size and normalisation from preprocessor_config.json
    assert qkv.load(tmp_path)[0].config == config  # qkv.load tells a Hugging Face directory from its own
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match="only the 7x7 stem"):
        qkv.models.build("resnet-28-small").save_hf(tmp_path / "small")


def test_save_load_round_trip_bit_for_bit(tmp_path):
    config = ResNetConfig(**{**PRESETS["resnet-28-small"], "class_names": list("abcdefghij")})
    model = ResNet(config)
    model.train()(torch.randn(8, 1, 28, 28))  # move the batch-norm statistics off their start
    model = perturbed(model)
    qkv.save_model(model, tmp_path)
    loaded, tokenizer = qkv.load(tmp_path)
    assert tokenizer is None and isinstance(loaded, ResNet) and loaded.config == config
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_presets():
    counts = {name: sum(p.numel() for p in qkv.models.build(name).parameters()) for name in PRESETS}
    assert counts["resnet-18"] == 11_689_512 and counts["resnet-50"] == 25_557_032  # as torchvision's
    vit = sum(p.numel() for p in qkv.models.build("vit-28-tiny").parameters())
    assert counts["resnet-28-small"] == 272_186 and 0.8 < counts["resnet-28-small"] / vit < 1.0
    model = qkv.models.build("resnet-28-small").eval()
    x = torch.randn(2, 1, 28, 28)
    features = model.forward_features(x)
    assert features.shape == (2, 64, 7, 7)  # 3x3 stem at stride 1, then 28 -> 28 -> 14 -> 7
    assert torch.equal(model(x), model.forward_head(features))
    assert qkv.models.build("resnet-18").forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)


def test_bad_inputs_say_what_the_model_expects():
    model = qkv.models.build("resnet-28-small").eval()
    with pytest.raises(ValueError, match="grey images with 1 channel"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="float tensor"):
        model(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="float tensor"):
        model(torch.randn(1, 28, 28))
    with pytest.raises(ValueError, match="image size 3x8 is too small: .* at least 4x4 .*trained at 28x28"):
        model(torch.randn(1, 1, 3, 8))
    with pytest.raises(ValueError, match="too small: the model downsamples by 32"):
        qkv.models.build("resnet-18")(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="no attention weights"):
        model.forward_features(torch.randn(1, 1, 28, 28), attentions=[])
    assert model(torch.randn(1, 1, 4, 4)).shape == (1, 10)
    for fields, message in ((dict(layer_type="plain"), "layer_type must be one of basic, bottleneck"),
                            (dict(hidden_sizes=[64, 128], depths=[2]), "one entry per stage"),
                            (dict(hidden_sizes=[64, 130], depths=[2, 2]), "multiples of 4"),
                            (dict(depths=[2, 0, 2, 2]), "depths must be a positive integer"),
                            (dict(stem="5x5"), "stem must be one of 7x7, 3x3")):
        with pytest.raises(ConfigError, match=message):
            qkv.models.build("resnet-50", **fields)


# --- the image-classification task, unchanged, on the Fashion-MNIST fixture --------------

TINY_RESNET = [
    "model.preset=resnet-28-small", "model.embedding_size=8", "model.hidden_sizes=[8, 16]", "model.depths=[1, 1]",
    "train.batch_size=16", "train.max_steps=6", "train.warmup_steps=2", "train.log_interval=1",
    "train.eval_interval=3", "train.eval_batches=1", "train.ckpt_interval=3",
]


@pytest.fixture(scope="module")
def image_data(data_root):
    data.get("fashion-mnist", source=FIXTURES / "fashion-mnist", log=lambda *a: None)
    return data_root


def train(config, out, *extra):
    args = ["train", str(ROOT / "configs" / config), "--no-progress", "--set", f"out_dir={out}"]
    for item in (*TINY_RESNET, *extra):
        args += ["--set", item]
    assert main(args) == 0


@pytest.mark.parametrize("config", ["vit-fashion-mnist.toml", "resnet-fashion-mnist.toml"])
def test_the_image_task_trains_a_resnet(image_data, tmp_path, config):
    train(config, tmp_path / "run")
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records if "val_acc" in r] == [3, 6]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model_type"] == "resnet" and saved["stem"] == "3x3" and saved["num_channels"] == 1
    assert saved["class_names"][0] == "T-shirt/top" and 0.1 < saved["image_mean"][0] < 0.5
    result = evaluate_run(tmp_path / "run", split="test")
    assert result["images"] == 60 and 0.0 <= result["accuracy"] <= 1.0
    model, tokenizer = qkv.load(tmp_path / "run")
    assert isinstance(model, ResNet) and tokenizer is None and model.config.hidden_sizes == [8, 16]
    assert not model.training
