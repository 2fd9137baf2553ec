"""The detection task (train, validate with COCO mAP, evaluate), its augmentation and
COCO scoring by hand-made cases, and `qkv detect`, on the small MNIST detection fixture."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import qkv
from qkv.cli import main
from qkv.data import prepared
from qkv.data.detection import coco_file, read_split
from qkv.inference.detect import detections
from qkv.tasks.detection import DetectionDataConfig, augment, coco_eval, coco_results, to_targets
from qkv.train.metrics import read_metrics
from qkv.train.run import evaluate_run

from .conftest import ROOT

TINY_DETR = ["model.d_model=32", "model.encoder_layers=1", "model.decoder_layers=2", "model.encoder_ffn_dim=64",
             "model.decoder_ffn_dim=64", "model.num_queries=8", "train.batch_size=4", "train.max_steps=4",
             "train.warmup_steps=1", "train.log_interval=1", "train.eval_interval=2", "train.eval_batches=1",
             "train.ckpt_interval=2"]


@pytest.fixture(scope="module")
def detr_run(detection_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "detr"
    args = ["train", str(ROOT / "configs" / "detr-mnist-detection.toml"), "--no-progress", "--set", f"out_dir={out}"]
    for item in TINY_DETR:
        args += ["--set", item]
    assert main(args) == 0
    return out


def test_training_validates_with_coco_map_and_saves_what_detect_needs(detr_run):
    records = read_metrics(detr_run / "metrics.jsonl")
    assert [r["step"] for r in records if "val_map" in r] == [2, 4]
    assert all(0 <= r["val_map"] <= r["val_map50"] <= 1 for r in records if "val_map" in r)
    config = json.loads((detr_run / "config.json").read_text())
    assert config["model_type"] == "detr" and config["class_names"] == [str(d) for d in range(10)]
    model, tokenizer = qkv.load(detr_run)
    assert isinstance(model, qkv.DETR) and tokenizer is None and model.config.num_labels == 10


def test_evaluate_scores_the_split_with_pycocotools_and_draws(detr_run):
    result = evaluate_run(detr_run, split="test", pictures=2)
    assert result["images"] == 6
    assert set(result) >= {"map", "map50", "map75", "map_small", "map_medium", "map_large"}
    found = json.loads((detr_run / "eval-test" / "detections.json").read_text())
    assert found and {"image_id", "category_id", "bbox", "score"} <= set(found[0])
    assert sorted(p.name for p in (detr_run / "eval-test").glob("*.png")) == ["test-0000.png", "test-0001.png"]


def test_coco_eval_of_perfect_and_shifted_detections(detection_data):
    folder = prepared("mnist-detection")
    _, targets = read_split(folder, "val")
    perfect = [{"scores": torch.ones(len(t["labels"])), "labels": torch.from_numpy(t["labels"]),
                "boxes": torch.from_numpy(t["boxes"]) / 96} for t in targets]
    ids = range(len(targets))
    assert coco_eval(coco_file(folder, "val"), coco_results(perfect, ids, (96, 96)), ids)["map"] == pytest.approx(1.0)
    # every box moved right by its own width: IoU 0 with its object, so nothing is found
    moved = [dict(d, boxes=d["boxes"] + torch.stack([d["boxes"][:, 2] - d["boxes"][:, 0], 0 * d["boxes"][:, 0]] * 2, -1))
             for d in perfect]
    assert coco_eval(coco_file(folder, "val"), coco_results(moved, ids, (96, 96)), ids)["map"] == 0.0
    wrong_class = [dict(d, labels=(d["labels"] + 1) % 10) for d in perfect]
    assert coco_eval(coco_file(folder, "val"), coco_results(wrong_class, ids, (96, 96)), ids)["map"] == 0.0


def test_targets_are_normalised_centre_boxes():
    t = to_targets([np.array([[10, 20, 30, 60]], np.float32)], [np.array([3])], 100)[0]
    torch.testing.assert_close(t["boxes"], torch.tensor([[0.2, 0.4, 0.2, 0.4]]))
    assert t["class_labels"].tolist() == [3]


def test_augmentation_moves_the_boxes_with_the_pixels():
    canvas = np.zeros((1, 96, 96), np.uint8)
    canvas[0, 30:50, 20:30] = 255                     # one object, box (20, 30, 30, 50)
    box, label = [np.array([[20, 30, 30, 50]], np.float32)], [np.array([7])]
    for seed in range(20):
        images, boxes, labels = augment(canvas, box, label, DetectionDataConfig(scale=0.3, flip=True),
                                        np.random.default_rng(seed))
        ys, xs = np.nonzero(images[0] > 127)
        if len(boxes[0]) == 0:  # cut off by the zoom's crop: then little of it may remain
            assert len(xs) < 0.5 * 200
            continue
        x0, y0, x1, y1 = boxes[0][0]
        assert labels[0].tolist() == [7]
        assert abs(xs.min() - x0) <= 1.5 and abs(xs.max() + 1 - x1) <= 1.5  # the box follows the pixels
        assert abs(ys.min() - y0) <= 1.5 and abs(ys.max() + 1 - y1) <= 1.5
    same = augment(canvas, box, label, DetectionDataConfig(scale=0.0, flip=False), np.random.default_rng(0))
    assert np.array_equal(same[0], canvas) and np.array_equal(same[1][0], box[0])


def test_detections_of_softmax_and_sigmoid_heads():
    class Config:
        num_labels = 2
    model = type("M", (), {"config": Config()})()
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])
    # DETR: classes + "no object"; query 1 is "no object" (its best real class scores 0.1)
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.05, 0.85]]]))
    d = detections(model, {"logits": logits, "pred_boxes": boxes}, threshold=0.5)[0]
    assert d["labels"].tolist() == [0] and d["scores"].tolist() == pytest.approx([0.7])
    torch.testing.assert_close(d["boxes"], torch.tensor([[0.4, 0.4, 0.6, 0.6]]))
    # Deformable DETR: a sigmoid per class; the best (query, class) pairs over all queries
    logits = torch.logit(torch.tensor([[[0.9, 0.8], [0.3, 0.95]]]))
    d = detections(model, {"logits": logits, "pred_boxes": boxes}, threshold=0.5)[0]
    assert d["labels"].tolist() == [1, 0, 1] and d["queries"].tolist() == [1, 0, 0]
    assert d["scores"].tolist() == pytest.approx([0.95, 0.9, 0.8])


def test_detect_prints_and_draws(detr_run, detection_data, tmp_path, capsys):
    images, _ = read_split(prepared("mnist-detection"), "test")
    Image.fromarray(images[0]).save(tmp_path / "scene.png")
    Image.fromarray(np.tile(images[1], (1, 2))).save(tmp_path / "wide.png")  # another size: read as it is
    assert main(["detect", str(detr_run), str(tmp_path / "scene.png"), str(tmp_path / "wide.png"),
                 "--threshold", "0", "--out", str(tmp_path / "drawn")]) == 0
    out = capsys.readouterr().out
    assert "scene.png: 8 objects scoring >= 0" in out and "wide.png: 8 objects" in out and "x0=" in out
    for name in ("scene", "wide"):
        assert Image.open(tmp_path / "drawn" / f"{name}-detections.png").size[0] >= 96


def test_detect_refuses_bad_input(detr_run, tmp_path, capsys):
    assert main(["detect", str(detr_run), str(tmp_path / "missing.png")]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err
    assert main(["detect", str(detr_run), str(ROOT / "README.md"), "--threshold", "2"]) == 2
    assert "--threshold must be a score in [0, 1], got 2.0" in capsys.readouterr().err
    vit = tmp_path / "vit"
    qkv.save_model(qkv.models.build("vit-28-tiny"), vit)
    assert main(["detect", str(vit), str(ROOT / "README.md")]) == 2
    assert "not an object detector" in capsys.readouterr().err


def test_analyze_queries_of_detr_and_deformable_detr(detr_run, detection_data, tmp_path, capsys):
    images, _ = read_split(prepared("mnist-detection"), "test")
    Image.fromarray(images[0]).save(tmp_path / "scene.png")
    assert main(["analyze", str(detr_run), "queries", str(tmp_path / "scene.png"), "--threshold", "0",
                 "--out", str(tmp_path / "a")]) == 0
    numbers = json.loads((tmp_path / "a" / "queries-scene.json").read_text())
    maps = np.array(numbers["maps"])
    assert maps.shape == (8, *numbers["grid"]) and numbers["grid"] == [6, 6]  # one map per query over 6x6 cells
    np.testing.assert_allclose(maps.sum((1, 2)), 1, atol=1e-4)               # each a distribution over the grid
    deformable = tmp_path / "deformable"
    qkv.save_model(qkv.models.build("deformable-detr-96-small", d_model=32, encoder_layers=1, decoder_layers=1,
                                    encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=4), deformable)
    assert main(["analyze", str(deformable), "queries", str(tmp_path / "scene.png"), "--threshold", "0",
                 "--out", str(tmp_path / "b")]) == 0
    numbers = json.loads((tmp_path / "b" / "queries-scene.json").read_text())
    model, _ = qkv.load(deformable)
    c = model.config
    per_object = c.num_feature_levels * c.decoder_attention_heads * c.decoder_n_points
    assert len(numbers["points"]) == len(numbers["objects"]) == 40  # top 100 of 4 queries x 10 classes
    assert np.array(numbers["points"][0]).shape == (per_object, 2)
    np.testing.assert_allclose(np.array(numbers["weights"][0]).sum(), c.decoder_attention_heads, atol=5e-3)  # 4 decimals
    assert (tmp_path / "b" / "queries-scene.png").is_file()
    assert main(["analyze", str(detr_run), "queries", str(tmp_path / "scene.png"), "--threshold", "1"]) == 2
    assert "no object in" in capsys.readouterr().err
