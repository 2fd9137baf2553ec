"""The image-classification task through the one Trainer, `qkv evaluate` and `qkv classify`,
on the Fashion-MNIST and MNIST fixtures with the presets shrunk."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import qkv
from qkv import data
from qkv.cli import main
from qkv.tasks.image_classification import ImageDataConfig, augment
from qkv.train.metrics import read_metrics
from qkv.train.config import load_run_config

from .conftest import FIXTURES, ROOT

TINY_VIT = [
    "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
    "model.intermediate_size=64", "train.batch_size=16", "train.max_steps=6", "train.warmup_steps=2",
    "train.log_interval=1", "train.eval_interval=3", "train.eval_batches=1", "train.ckpt_interval=3",
]


@pytest.fixture(scope="module")
def image_data(data_root):
    for name, source in (("fashion-mnist", FIXTURES / "fashion-mnist"), ("mnist", FIXTURES / "mnist")):
        data.get(name, source=source, log=lambda *a: None)
    return data_root


def train(config, out, *extra):
    args = ["train", str(ROOT / "configs" / config), "--no-progress", "--set", f"out_dir={out}"]
    for item in (*TINY_VIT, *extra):
        args += ["--set", item]
    assert main(args) == 0


@pytest.fixture(scope="module")
def fashion_run(image_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fashion"
    train("vit-fashion-mnist.toml", out)
    return out


def test_training_logs_and_saves_what_inference_needs(fashion_run):
    records = read_metrics(fashion_run / "metrics.jsonl")
    assert [r["step"] for r in records if "val_acc" in r] == [3, 6]
    config = json.loads((fashion_run / "config.json").read_text())
    assert config["class_names"][0] == "T-shirt/top" and config["num_channels"] == 1
    assert 0.1 < config["image_mean"][0] < 0.5  # measured on the training images
    model, tokenizer = qkv.load(fashion_run)
    assert isinstance(model, qkv.ViT) and tokenizer is None


def test_resume_continues_the_same_run(image_data, tmp_path):
    train("vit-mnist.toml", tmp_path / "full")
    train("vit-mnist.toml", tmp_path / "half", "train.max_steps=3")
    train("vit-mnist.toml", tmp_path / "half")  # resumes at step 3
    losses = [[r["loss"] for r in read_metrics(d / "metrics.jsonl") if "loss" in r] for d in (tmp_path / "full", tmp_path / "half")]
    assert len(losses[0]) == len(losses[1]) == 6
    assert losses[0] == losses[1]


def test_evaluate_prints_accuracy_and_saves_confusion_matrix(fashion_run, capsys):
    assert main(["evaluate", str(fashion_run), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "Ankle boot" in out
    csv = (fashion_run / "eval-test" / "confusion.csv").read_text().splitlines()
    assert sum(int(v) for line in csv[1:] for v in line.split(",")[1:]) == 60  # every test image counted
    assert (fashion_run / "eval-test" / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_classify_images(fashion_run, tmp_path, capsys):
    images = data.images.load_split(data.prepared("fashion-mnist"), "test")[0]
    Image.fromarray(images[0]).save(tmp_path / "grey.png")
    Image.fromarray(np.stack([images[1]] * 3, -1)).resize((56, 40)).save(tmp_path / "rgb.jpg")  # converted, resized
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["classify", str(fashion_run), str(tmp_path / "grey.png"), str(tmp_path / "rgb.jpg")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * 6 and lines[0].endswith("grey.png")
    probs = [float(line.split("%")[0]) for line in lines[1:6]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.01
    assert main(["classify", str(fashion_run), str(tmp_path / "notes.png")]) == 2
    assert "is not an image" in capsys.readouterr().err


def test_augmentation_is_batched_and_repeatable():
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    cfg = ImageDataConfig(crop_padding=2, flip=True, mixup=0.4, cutmix=1.0)
    a = augment(x, y, 10, cfg, np.random.default_rng([1, 16]))
    b = augment(x, y, 10, cfg, np.random.default_rng([1, 16]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == x.shape and a[1].shape == (8, 10)
    assert torch.allclose(a[1].sum(-1), torch.ones(8))  # soft targets of two classes
    plain = augment(x, y, 10, ImageDataConfig(crop_padding=0), np.random.default_rng(0))
    assert torch.equal(plain[0], x) and torch.equal(plain[1], y)


def test_config_errors(image_data, tmp_path):
    task = qkv.tasks.TASKS["image_classification"]
    run = load_run_config(ROOT / "configs" / "vit-mnist.toml", ["model.preset=vit-huge"])
    with pytest.raises(qkv.config.ConfigError, match="unknown model 'vit-huge'; .*presets .*vit-28-small"):
        task.for_training(run, tmp_path)
    run = load_run_config(ROOT / "configs" / "vit-mnist.toml", ["model.num_channels=3"])
    with pytest.raises(qkv.config.ConfigError, match=r"\[model\] sets num_channels=3, but the data dictates num_channels=1"):
        task.for_training(run, tmp_path)
    run = load_run_config(ROOT / "configs" / "vit-mnist.toml", ["model.preset=gpt2"])
    with pytest.raises(qkv.config.ConfigError, match=r"role 'image_classifier' \(resnet, swin, vit\), not 'gpt'"):
        task.for_training(run, tmp_path)


def test_train_size_takes_nested_subsets_fixed_by_the_seed(image_data, tmp_path):
    task = qkv.tasks.TASKS["image_classification"]

    def subset(size, seed=1337):
        run = load_run_config(ROOT / "configs" / "vit-mnist.toml", [f"data.train_size={size}", f"seed={seed}", *TINY_VIT])
        return task.for_training(run, tmp_path).images

    small, large, everything = subset(8), subset(16), subset(0)
    assert len(small) == 8 and len(large) == 16
    rows = {row.tobytes() for row in large}
    assert all(row.tobytes() in rows for row in small)  # the 8 are among the 16
    assert np.array_equal(subset(8), small) and not np.array_equal(subset(8, seed=1), small)
    with pytest.raises(qkv.config.ConfigError, match=f"data.train_size={len(everything) + 1} exceeds"):
        subset(len(everything) + 1)
