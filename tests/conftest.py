import os
from pathlib import Path

import pytest
import torch

from qkv import data

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent
CHAR_CONFIG = ROOT / "configs" / "gpt-shakespeare-char.toml"
BPE_CONFIG = ROOT / "configs" / "gpt-shakespeare-bpe.toml"

# The real presets, shrunk so that a run takes seconds on the fixture.
TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
    "data.seq_len=32", "train.batch_size=8", "train.warmup_steps=5", "train.log_interval=1",
    "train.eval_interval=5", "train.eval_batches=2", "train.ckpt_interval=5",
    "train.optimizer=adamw",  # FSDP runs take no Muon yet; tests/test_train.py runs Muon itself
]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A data root holding Shakespeare prepared from the fixture (real text, cut small):
    three works to train on and the first pages of Hamlet held out."""
    root = tmp_path_factory.mktemp("data")
    os.environ["QKV_DATA"] = str(root)
    data.get("shakespeare", source=FIXTURES / "shakespeare", log=lambda *a: None)
    return root


DETECTION_COUNTS = {"train": 12, "val": 6, "test": 6}


@pytest.fixture(scope="session")
def detection_data(data_root):
    """The data root with ``mnist-detection`` and ``fashion-detection`` prepared small
    (12 / 6 / 6 canvases) from the MNIST and Fashion-MNIST fixtures: read them with
    ``qkv.data.detection.read_split(data.prepared("mnist-detection"), split)``."""
    for name, source in (("mnist", FIXTURES / "mnist"), ("fashion-mnist", FIXTURES / "fashion-mnist")):
        data.get(name, source=source, log=lambda *a: None)
    for name in ("mnist-detection", "fashion-detection"):
        data.detection.SETS[name].prepare(data_root / name, counts=DETECTION_COUNTS, log=lambda *a: None)
    return data_root


def perturbed(model, scale: float = 0.1):
    """Randomise every weight and the batch-norm running statistics (and a frozen batch norm's
    affine buffers), so that a wrong mapping or a missed tensor shows; returns the model in eval mode."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.add_(torch.randn_like(b) * 0.2)
            elif name.endswith("running_var"):
                b.mul_(torch.rand_like(b) + 0.5)
            elif name.endswith((".weight", ".bias")):  # DETR's frozen batch norm keeps its affine as buffers
                b.add_(torch.randn_like(b) * 0.1)
    return model.eval()


def some_labels(num_labels: int, counts=(2, 0, 3)) -> list[dict]:
    """Detection targets in Hugging Face's format, ``counts[i]`` random boxes for image i (fixed seed)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for k in counts:
        cxcy, wh = torch.rand(k, 2, generator=g) * 0.6 + 0.2, torch.rand(k, 2, generator=g) * 0.3 + 0.05
        out.append({"class_labels": torch.randint(0, num_labels, (k,), generator=g), "boxes": torch.cat([cxcy, wh], 1)})
    return out


def fit_a_batch(model, x, labels, steps: int, lr: float) -> list[float]:
    """AdamW on one detection batch for ``steps`` steps; the losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(x, labels=labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
