"""Detection scenes built from MNIST / Fashion-MNIST fixtures: tight boxes, items from the
right split only, the same bytes from the same seed, COCO JSON that pycocotools reads,
and one-line errors for missing or corrupt files."""
import contextlib
import io
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from qkv import data
from qkv.data import DataError, detection
from qkv.data.images import load_split, read_meta, save_splits

from .conftest import DETECTION_COUNTS, FIXTURES

SPEC = detection.Spec()
FILES = ["train.npz", "train.json", "val.npz", "val.json", "test.npz", "test.json", "meta.json"]


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """The MNIST fixture (120 / 30 / 30 real digits) prepared in a root of its own."""
    return data.get("mnist", root=tmp_path_factory.mktemp("src"), source=FIXTURES / "mnist", log=quiet)


def test_resize_is_an_exact_bilinear_filter(mnist):
    image = load_split(mnist, "train")[0][0]
    for h, w in ((16, 12), (56, 40), (28, 28), (9, 50)):
        ours = detection.resize(image, h, w)
        pil = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
        assert ours.shape == (h, w) and np.abs(ours.astype(int) - pil).max() <= 1  # PIL's filter, integer weights
    flat = np.full((20, 13), 77, np.uint8)
    assert (detection.resize(flat, 47, 9) == 77).all()  # weights sum to exactly one: no drift, no overshoot


def _alone(layer, box, canvas=SPEC.canvas):
    """An item pasted alone on an empty canvas."""
    out = np.zeros((canvas, canvas), np.uint8)
    x0, y0, x1, y1 = box
    out[y0:y1, x0:x1] = layer
    return out


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_boxes_are_tight_and_items_come_from_their_split(mnist, split):
    images, labels = load_split(mnist, split)
    crops = detection.tight_boxes(images > SPEC.threshold)
    n_items = 0
    for scene in detection.scenes(images, labels, 10, split):
        items = np.zeros_like(scene.image)
        for box, label, source, layer in zip(scene.boxes, scene.labels, scene.sources, scene.layers):
            x0, y0, x1, y1 = box
            # tight: the item's real pixels reach all four borders of its box, nothing lies outside it
            assert layer.shape == (y1 - y0, x1 - x0)
            assert layer[0].any() and layer[-1].any() and layer[:, 0].any() and layer[:, -1].any()
            assert (detection.tight_boxes(_alone(layer, box)[None] > 0)[0] == box).all()
            assert ((layer == 0) | (layer > SPEC.threshold)).all()
            # from this split: the layer is image `source` of this split, at one of the scales
            assert label == labels[source]
            assert any(np.array_equal(layer, detection.render_item(images[source], crops[source], s, SPEC.threshold))
                       for s in range(SPEC.scale[0], SPEC.scale[1] + 1))
            assert SPEC.scale[0] - 2 <= max(layer.shape) <= SPEC.scale[1]
            np.maximum(items, _alone(layer, box), out=items)
            n_items += 1
        assert 1 <= len(scene.boxes) <= SPEC.items[1]
        # blended by maximum; clutter never touches a box: inside the boxes, the canvas is the items
        inside = np.zeros(scene.image.shape, bool)
        for x0, y0, x1, y1 in scene.boxes:
            inside[y0:y1, x0:x1] = True
        assert np.array_equal(scene.image[inside], items[inside])
        assert not items[~inside].any()
    assert n_items > 20


def test_overlap_is_limited(mnist):
    images, labels = load_split(mnist, "train")
    for scene in detection.scenes(images, labels, 40, "train"):
        b = scene.boxes.astype(float)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        wh = np.clip(np.minimum(b[:, None, 2:], b[None, :, 2:]) - np.maximum(b[:, None, :2], b[None, :, :2]), 0, None)
        inter = wh[..., 0] * wh[..., 1]
        iou = inter / (area[:, None] + area[None] - inter)
        np.fill_diagonal(iou, 0)
        assert iou.max(initial=0) <= SPEC.max_iou + 1e-9


def test_split_provenance_on_disk(tmp_path):
    """Val and test items are taken from dimmed copies of the source's val / test images:
    bilinear weights are non-negative and blending is by maximum, so a canvas can only be
    as bright as the brightest image it drew from."""
    src = tmp_path / "src"
    real = {s: load_split(data.get("mnist", root=tmp_path, source=FIXTURES / "mnist", log=quiet), s) for s in
            ("train", "val", "test")}
    dim = {"train": 255, "val": 120, "test": 60}
    splits = {s: ((x.astype(np.int64) * dim[s] // 255).astype(np.uint8), y) for s, (x, y) in real.items()}
    save_splits(src, splits, [str(d) for d in range(10)], "dimmed fixture", log=quiet)
    folder = detection.MNIST_DETECTION.prepare(tmp_path / "mnist-detection", source=src, counts=DETECTION_COUNTS, log=quiet)
    peaks = {s: detection.read_split(folder, s)[0].max(axis=(1, 2)) for s in ("train", "val", "test")}
    assert peaks["train"].max() > 200
    assert 60 < peaks["val"].max() <= 120 and peaks["test"].max() <= 60
    assert all(len(t["boxes"]) >= 1 for s in ("val", "test") for t in detection.read_split(folder, s)[1])


def test_files_reader_and_pycocotools(detection_data):
    folder = data.prepared("mnist-detection")
    meta = read_meta(folder)
    assert meta["source"] == "mnist" and meta["labels"] == [str(d) for d in range(10)]
    assert meta["image_size"] == [96, 96] and meta["channels"] == 1 and meta["counts"] == DETECTION_COUNTS
    assert meta["seed"] == detection.SEED and meta["scale"] == [16, 56] and meta["items"] == [1, 6]
    assert meta["clutter"] == list(detection.CLUTTER)
    source = data.prepared("mnist")
    for split, n in DETECTION_COUNTS.items():
        images, targets = detection.read_split(folder, split)
        assert images.dtype == np.uint8 and images.shape == (n, 96, 96) and len(targets) == n
        # the files are the generator's output on this split of the source
        canvases, drawn = detection.build_split(*load_split(source, split), n, split)
        assert np.array_equal(images, canvases)
        for t, (boxes, labels) in zip(targets, drawn):
            assert t["boxes"].dtype == np.float32 and t["labels"].dtype == np.int64
            assert np.array_equal(t["boxes"], boxes.astype(np.float32)) and np.array_equal(t["labels"], labels)
        for image, t in zip(images, targets):  # each box's four border lines hold real pixels
            for x0, y0, x1, y1 in t["boxes"].astype(int):
                box = image[y0:y1, x0:x1] > detection.THRESHOLD
                assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(detection.coco_file(folder, split)))
        assert len(coco.getAnnIds()) == sum(len(t["boxes"]) for t in targets)
        assert sorted(coco.getImgIds()) == list(range(n))
        assert coco.loadImgs(3)[0] == {"id": 3, "file_name": f"{split}/000003.png", "width": 96, "height": 96}
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == meta["labels"]
        ann = coco.loadAnns(coco.getAnnIds(imgIds=[0]))
        x, y, w, h = ann[0]["bbox"]
        assert ann[0]["area"] == w * h and ann[0]["iscrowd"] == 0
        assert [x, y, x + w, y + h] == targets[0]["boxes"][0].tolist()
    # the ground truth scored as detections: COCO mAP 1.0, so COCOeval reads ids and boxes as meant
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in coco.dataset["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)
    fashion = read_meta(data.prepared("fashion-detection"))
    assert fashion["source"] == "fashion-mnist" and fashion["labels"][9] == "Ankle boot"


def test_same_seed_same_bytes_and_preparing_twice_is_a_no_op(mnist, tmp_path):
    a = detection.MNIST_DETECTION.prepare(tmp_path / "a" / "mnist-detection", source=mnist, counts=DETECTION_COUNTS, log=quiet)
    b = detection.MNIST_DETECTION.prepare(tmp_path / "b" / "mnist-detection", source=mnist, counts=DETECTION_COUNTS, log=quiet)
    assert sorted(p.name for p in a.iterdir()) == sorted(FILES)
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    stamps = {name: (a / name).stat().st_mtime_ns for name in FILES}
    logged = []
    assert detection.MNIST_DETECTION.prepare(a, log=logged.append, counts={"train": 99, "val": 9, "test": 9}) == a
    assert logged == [f"mnist-detection is already prepared in {a}"]
    assert {name: (a / name).stat().st_mtime_ns for name in FILES} == stamps
    other = detection.build_split(*load_split(mnist, "test"), 6, "test", detection.Spec(seed=1))[0]
    assert not np.array_equal(other, detection.read_split(a, "test")[0])


def test_missing_or_corrupt_files_give_one_line_errors(detection_data, tmp_path):
    folder = tmp_path / "mnist-detection"
    shutil.copytree(data.prepared("mnist-detection"), folder)

    def error(split):
        with pytest.raises(DataError) as e:
            detection.read_split(folder, split)
        assert "\n" not in str(e.value) and "run `qkv data get mnist-detection`" in str(e.value)
        return str(e.value)

    (folder / "val.npz").write_bytes((folder / "val.npz").read_bytes()[:200])
    assert error("val").startswith(f"{folder / 'val.npz'} is unreadable")
    (folder / "train.json").write_text('{"images": [], "annotations": [{"bbox": 3}]}')
    assert error("train").startswith(f"{folder / 'train.json'} ")
    (folder / "test.json").unlink()
    assert error("test") == f"{folder / 'test.json'} is missing; run `qkv data get mnist-detection`"
    with pytest.raises(DataError, match="test.json is missing"):
        detection.coco_file(folder, "test")
    assert not detection.MNIST_DETECTION.is_prepared(folder)  # so `qkv data get` draws it again
    with pytest.raises(DataError, match="not prepared.*qkv data get mnist-detection"):
        data.prepared("mnist-detection", root=tmp_path)
    with pytest.raises(DataError, match="not a prepared fashion-mnist folder"):
        detection.FASHION_DETECTION.prepare(tmp_path / "x" / "fashion-detection", source=tmp_path, log=quiet)


def test_registered_for_the_data_command():
    for name, source in (("mnist-detection", "mnist"), ("fashion-detection", "fashion-mnist")):
        module = data.DATASETS[name]
        assert module.source == source and callable(module.prepare) and callable(module.is_prepared)
        assert "96x96" in module.__doc__.splitlines()[0]
