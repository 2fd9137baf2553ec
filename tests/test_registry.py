"""The model registry: `qkv.models.build` from a kind or a preset, unique names, roles; and a
task that takes any registered model of its role, here an image classifier the test defines."""
import json
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import qkv
import qkv.models
from qkv import data
from qkv.cli import main
from qkv.config import merged
from qkv.errors import ConfigError
from qkv.models.images import ImageClassifier, ImageConfig
from qkv.tasks import TASKS
from qkv.train import evaluate_run
from qkv.train.config import load_run_config
from qkv.train.metrics import read_metrics

from .conftest import FIXTURES, ROOT


def test_build_a_preset_or_a_kind_with_overrides():
    vit = qkv.models.build("vit-28-tiny", num_labels=5)
    assert isinstance(vit, qkv.ViT) and vit.classifier.out_features == 5
    c = vit.config
    assert (c.image_size, c.patch_size, c.hidden_size, c.num_hidden_layers, c.num_labels) == (28, 7, 96, 4, 5)
    gpt = qkv.models.build("gpt", n_layer=1, n_head=2, n_embd=32, vocab_size=16, block_size=8)
    assert isinstance(gpt, qkv.GPT) and len(gpt.transformer.h) == 1 and gpt.config.n_embd == 32
    with pytest.raises(ConfigError, match=r"unknown config key \[model\] n_layers; valid keys in \[model\]"):
        qkv.models.build("gpt", n_layers=1)


def test_a_table_in_model_overrides_merges_into_the_presets_table():
    """[model.backbone] depths = [...] over detr-96-small changes the depths and keeps the
    preset's other backbone fields (not ResNet-50's defaults in their place)."""
    preset = qkv.models.PRESETS["detr-96-small"][1]["backbone"]
    section = {"preset": "detr-96-small", "backbone": {"depths": [1, 1, 1]}}
    c = qkv.models.from_section(section, "object_detector", default="detr").config
    assert c.backbone["depths"] == [1, 1, 1]
    assert {k: c.backbone[k] for k in preset if k != "depths"} == {k: v for k, v in preset.items() if k != "depths"}
    assert qkv.models.build("detr-96-small", backbone={"depths": [1, 1, 1]}).config.backbone == c.backbone
    assert merged({"a": {"x": 1, "y": 2}, "b": [1]}, {"a": {"y": 3}, "b": [2], "c": 4}) == \
        {"a": {"x": 1, "y": 3}, "b": [2], "c": 4}  # tables merge; lists and other values replace


def test_an_unknown_name_lists_the_kinds_and_presets():
    with pytest.raises(ConfigError) as error:
        qkv.models.build("vit-huge")
    message = str(error.value)
    assert message.startswith("unknown model 'vit-huge'; qkv has the kinds bert, ")  # sorted; each named below
    assert all(name in message for name in (*qkv.models.kinds(), *qkv.models.PRESETS))


def test_kinds_by_role():
    assert qkv.models.kinds("seq2seq") == ["lstm_seq2seq", "transformer"]
    assert qkv.models.kinds("image_classifier") == ["resnet", "swin", "vit"]
    assert qkv.models.kinds("causal_lm") == ["gpt"]
    assert qkv.models.kinds("no such role") == []


def test_a_taken_name_is_refused_and_the_registry_is_left_as_it_was():
    models, presets = dict(qkv.models.MODELS), dict(qkv.models.PRESETS)

    def model(kind, preset_names):
        return type("Clash", (nn.Module,), {"model_type": kind, "role": "causal_lm", "config_class": qkv.GPTConfig,
                                           "presets": {name: {} for name in preset_names}})

    with pytest.raises(TypeError, match="preset name 'gpt2' of Clash is already taken"):
        qkv.models.register(model("clash", ["my-new", "gpt2"]))       # another model's preset
    with pytest.raises(TypeError, match="'gpt' of Clash is already taken"):
        qkv.models.register(model("gpt", []))                         # another model's kind
    with pytest.raises(TypeError, match="'vit' of Clash is already taken"):
        qkv.models.register(model("clash", ["vit"]))                  # a preset named as a kind
    with pytest.raises(TypeError, match="Clash must declare config_class"):
        qkv.models.register(type("Clash", (nn.Module,), {"model_type": "clash", "role": "causal_lm"}))
    assert qkv.models.MODELS == models and qkv.models.PRESETS == presets  # no "clash", no "my-new"


# -- a model the image-classification task has never heard of -----------------------------
@dataclass
class TinyMLPConfig(ImageConfig):
    image_size: int = 28
    num_channels: int = 1
    num_labels: int = 10
    hidden: int = 16
    dropout: float = 0.0
    class_names: list[str] = field(default_factory=list)
    image_mean: list[float] = field(default_factory=list)
    image_std: list[float] = field(default_factory=list)


class TinyMLP(ImageClassifier):
    """Flatten, one hidden layer, class logits."""
    config_class = TinyMLPConfig
    model_type = "tiny_mlp"
    presets = {"tiny-mlp-28": dict(image_size=28, num_channels=1, num_labels=10, hidden=16)}

    def __init__(self, config: TinyMLPConfig):
        super().__init__()
        self.config = c = config
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(c.num_channels * c.image_size**2, c.hidden), nn.GELU(),
                                 nn.Dropout(c.dropout))
        self.classifier = nn.Linear(c.hidden, c.num_labels)

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)


@pytest.fixture
def tiny_mlp():
    """TinyMLP in the registry for one test, and out of it afterwards."""
    qkv.models.register(TinyMLP)
    yield TinyMLP
    del qkv.models.MODELS[TinyMLP.model_type]
    for name in TinyMLP.presets:
        del qkv.models.PRESETS[name]


@pytest.fixture(scope="module")
def mnist(data_root):
    data.get("mnist", source=FIXTURES / "mnist", log=lambda *a: None)
    return data_root


TINY_TRAIN = ["train.batch_size=16", "train.max_steps=6", "train.warmup_steps=2", "train.log_interval=1",
              "train.eval_interval=3", "train.eval_batches=1", "train.ckpt_interval=3"]


def test_the_image_task_trains_any_registered_image_classifier(tiny_mlp, mnist, tmp_path, capsys):
    assert "tiny_mlp" in qkv.models.kinds("image_classifier")
    out = tmp_path / "mlp"
    args = ["train", str(ROOT / "configs" / "vit-mnist.toml"), "--no-progress", "--set", f"out_dir={out}",
            "--set", "model.preset=tiny-mlp-28"]
    for item in TINY_TRAIN:
        args += ["--set", item]
    assert main(args) == 0
    assert "image_classification: TinyMLP with" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "val_acc" in r] == [3, 6]

    config = json.loads((out / "config.json").read_text())  # what the task derived from the data
    assert config["model_type"] == "tiny_mlp" and config["class_names"] == [str(d) for d in range(10)]
    assert len(config["image_mean"]) == 1 and 0.05 < config["image_mean"][0] < 0.5

    results = evaluate_run(out, "test")
    assert 0.0 <= results["accuracy"] <= 1.0 and results["images"] > 0
    assert (out / "eval-test" / "confusion.png").is_file()

    model, tokenizer = qkv.load(out)  # through the registry's from_config
    assert isinstance(model, TinyMLP) and tokenizer is None and not model.training
    assert model.config.label_names == config["class_names"]
    with pytest.raises(ConfigError, match=r"\[model\] sets num_labels=3, but the data dictates num_labels=10"):
        TASKS["image_classification"].build(load_run_config(
            ROOT / "configs" / "vit-mnist.toml", ["model.preset=tiny-mlp-28", "model.num_labels=3"]), tmp_path)


def test_the_image_task_refuses_a_model_of_another_role(tiny_mlp, mnist, tmp_path, capsys):
    args = ["train", str(ROOT / "configs" / "vit-mnist.toml"), "--set", f"out_dir={tmp_path / 'run'}",
            "--set", "model.preset=gpt2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "role 'image_classifier' (resnet, swin, tiny_mlp, vit), not 'gpt'" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
