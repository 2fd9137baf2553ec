"""qkv's DETR against transformers' DetrForObjectDetection (ResNet backbone, small random
configs, batch-norm statistics perturbed): outputs with and without a pixel mask, both
conversion directions, the set loss with its Hungarian matching and auxiliary losses; and
on its own: box ops by hand, the matcher against brute force, the 2-D sine positions, the
config, bad inputs and captured cross-attention."""
import itertools
import json
import math

import pytest
import torch
import transformers
from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrSinePositionEmbedding
from transformers.models.detr.modeling_detr import DetrSinePositionEmbedding

import qkv
from qkv.config import ConfigError
from qkv.models.detection import SetCriterion, hungarian_match
from qkv.models.detr import DETR, DETRConfig
from qkv.nn import capture, sine_positions_2d
from qkv.nn.boxes import (box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou)

from .conftest import fit_a_batch, perturbed, some_labels

CONFIGS = [  # (transformers DetrConfig fields, ResNetConfig fields, image height, width)
    (dict(num_channels=3, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
          decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=6, num_labels=3),
     dict(layer_type="basic", embedding_size=8, hidden_sizes=[8, 16, 24], depths=[1, 2, 1]), 64, 72),
    (dict(num_channels=1, d_model=48, encoder_layers=3, decoder_layers=2, encoder_attention_heads=4,
          decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=96, num_queries=7, num_labels=5,
          activation_function="gelu"),
     dict(layer_type="bottleneck", embedding_size=8, hidden_sizes=[16, 32], depths=[2, 1],
          downsample_in_bottleneck=True), 40, 48),
]
IDS = ["basic-3ch", "bottleneck-gelu-1ch"]




def hf_detr(fields, backbone, **extra):
    stages = len(backbone["depths"])
    config = transformers.DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, dropout=0.0,
        backbone_config=transformers.ResNetConfig(num_channels=fields["num_channels"], out_features=[f"stage{stages}"],
                                                  **backbone), **fields, **extra)
    return perturbed(transformers.DetrForObjectDetection(config))


def pixel_mask(b, h, w):
    """Image 0 whole, the others padded at the right and bottom by different amounts."""
    mask = torch.ones(b, h, w, dtype=torch.long)
    for i in range(1, b):
        mask[i, h - 8 * i:] = 0
        mask[i, :, w - 12 * i:] = 0
    return mask




@pytest.mark.parametrize("fields,backbone,h,w", CONFIGS, ids=IDS)
def test_from_hf_matches_transformers(tmp_path, fields, backbone, h, w):
    hf = hf_detr(fields, backbone)
    hf.save_pretrained(tmp_path)
    model = qkv.from_hf(tmp_path)
    assert isinstance(model, DETR) and model.config.num_labels == fields["num_labels"]
    assert model.config.backbone["hidden_sizes"] == backbone["hidden_sizes"] and model.config.freeze_backbone_bn
    x = torch.randn(3, fields["num_channels"], h, w)
    diffs = {}
    with torch.no_grad():
        for name, mask in (("", None), ("masked ", pixel_mask(3, h, w))):
            ref, out = hf(x, pixel_mask=mask), model(x, mask)
            diffs[name + "logits"] = (out["logits"] - ref.logits).abs().max().item()
            diffs[name + "pred_boxes"] = (out["pred_boxes"] - ref.pred_boxes).abs().max().item()
            assert ref.logits.abs().max() > 0.1  # not trivially small
        assert (model(x)["logits"][2] - out["logits"][2]).abs().max() > 1e-3  # the mask changes padded images
    print("max |qkv - transformers|", diffs)
    assert max(diffs.values()) <= 1e-4


def test_auxiliary_predictions_are_each_decoder_layer_through_the_shared_norm_and_heads(tmp_path):
    fields, backbone, h, w = CONFIGS[0]
    hf = hf_detr(fields, backbone)
    hf.save_pretrained(tmp_path)
    model = qkv.from_hf(tmp_path)
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        ref, out = hf(x, output_hidden_states=True), model(x)
        states = ref.decoder_hidden_states  # (the zero input, layer 1, ..., the last layer after the norm)
        assert len(out["aux"]) == fields["decoder_layers"] - 1
        for i, aux in enumerate(out["aux"]):
            hidden = hf.model.decoder.layernorm(states[i + 1])
            assert (aux["logits"] - hf.class_labels_classifier(hidden)).abs().max() <= 1e-4
            assert (aux["pred_boxes"] - hf.bbox_predictor(hidden).sigmoid()).abs().max() <= 1e-4


def test_save_hf_round_trips(tmp_path):
    config = DETRConfig(image_size=64, num_channels=3, num_labels=4, class_names=["cat", "dog", "cow", "owl"],
                        backbone=dict(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 2], layer_type="basic"),
                        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=48, num_queries=5, dropout=0.0,
                        freeze_backbone_bn=True, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4])
    model = perturbed(DETR(config))
    qkv.save_hf(model, tmp_path)
    hf = transformers.DetrForObjectDetection.from_pretrained(tmp_path).eval()
    assert hf.config.id2label[2] == "cow" and not hf.config.auxiliary_loss
    x, mask = torch.randn(2, 3, 64, 56), pixel_mask(2, 64, 56)
    with torch.no_grad():
        ref, out = hf(x, pixel_mask=mask), model(x, mask)
        diffs = [(out["logits"] - ref.logits).abs().max().item(), (out["pred_boxes"] - ref.pred_boxes).abs().max().item()]
    print("max |qkv - transformers| after save_hf", diffs)
    assert max(diffs) <= 1e-4
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert processor.size["shortest_edge"] == 64 and list(processor.image_mean) == [0.4, 0.5, 0.6]
    back = qkv.from_hf(tmp_path)
    assert back.config == config  # image size and normalisation from preprocessor_config.json
    assert qkv.load(tmp_path)[0].config == config  # qkv.load tells a Hugging Face directory from its own
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match="only the 7x7 stem"):
        qkv.save_hf(qkv.models.build("detr-96-small", backbone=dict(stem="3x3", hidden_sizes=[8], depths=[1])),
                    tmp_path / "small")
    headless = transformers.DetrModel(hf.config)
    headless.save_pretrained(tmp_path / "headless")
    with pytest.raises(ConfigError, match="qkv loads DetrForObjectDetection checkpoints"):
        qkv.from_hf(tmp_path / "headless")


def test_loss_matches_transformers_with_auxiliary_losses(tmp_path):
    """transformers' model and loss on a batch (one image with no objects): qkv's criterion
    on the same outputs gives the same matching, total and terms, every layer's."""
    fields, backbone, h, w = CONFIGS[0]
    hf = hf_detr(fields, backbone, auxiliary_loss=True)
    labels = some_labels(fields["num_labels"])
    with torch.no_grad():
        ref = hf(torch.randn(3, 3, h, w), labels=labels)
    assert DETRConfig().class_cost == hf.config.class_cost and DETRConfig().eos_coefficient == hf.config.eos_coefficient
    ours = SetCriterion(fields["num_labels"])  # the defaults are Hugging Face's: costs 1/5/2, weights 1/5/2, eos 0.1
    out = ours({"logits": ref.logits, "pred_boxes": ref.pred_boxes, "aux": ref.auxiliary_outputs}, labels)
    diffs = {"loss": abs(out["loss"] - ref.loss).item()}
    for k in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error"):
        diffs[k] = abs(out[k] - ref.loss_dict[k]).item()
    for i, aux in enumerate(out["aux"]):
        for k in SetCriterion.parts:
            diffs[f"{k}_{i}"] = abs(aux[k] - ref.loss_dict[f"{k}_{i}"]).item()
    print("loss", ref.loss.item(), "max |qkv - transformers|", max(diffs.values()))
    assert len(diffs) == 5 + 3 * (fields["decoder_layers"] - 1) and max(diffs.values()) <= 1e-4
    assert ref.loss > 1.0


def test_model_loss_and_gradients_match_transformers(tmp_path):
    """End to end in train mode (dropout 0, frozen batch norm): qkv's model against transformers'
    with auxiliary_loss off (transformers' decoder changes its forward with it on, see
    qkv/interop/detr.py), and with it on against transformers' loss function on qkv's outputs."""
    fields, backbone, h, w = CONFIGS[1]
    hf = hf_detr(fields, backbone)
    hf.save_pretrained(tmp_path)
    model = qkv.from_hf(tmp_path)
    x, mask, labels = torch.randn(3, 1, h, w), pixel_mask(3, h, w), some_labels(fields["num_labels"], (1, 3, 2))
    ref = hf.train()(x, pixel_mask=mask, labels=labels)
    model.config.auxiliary_loss = False
    out = model.train()(x, mask, labels=labels)
    ref.loss.backward()
    out["loss"].backward()
    grad = (model.class_labels_classifier.weight.grad - hf.class_labels_classifier.weight.grad).abs().max().item()
    print("loss", out["loss"].item(), "|qkv - transformers|", abs(out["loss"] - ref.loss).item(), "grad", grad)
    assert abs(out["loss"] - ref.loss) <= 1e-4 and grad <= 1e-4
    for k in ("loss_ce", "loss_bbox", "loss_giou"):
        assert abs(out[k] - ref.loss_dict[k]) <= 1e-4
    model.config.auxiliary_loss = True
    with torch.no_grad():
        out = model(x, mask, labels=labels)
        hf.config.auxiliary_loss = True
        classes = torch.stack([a["logits"] for a in out["aux"]] + [out["logits"]])
        coords = torch.stack([a["pred_boxes"] for a in out["aux"]] + [out["pred_boxes"]])
        loss, _, _ = ForObjectDetectionLoss(out["logits"], labels, "cpu", out["pred_boxes"], hf.config, classes, coords)
    assert abs(out["loss"] - loss) <= 1e-4 and out["aux"][0]["loss_giou"] > 0


def test_box_ops_by_hand():
    a, b = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0], [3.0, 0.0, 4.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    # overlap 1x1 of two 2x2 boxes: union 7, enclosing 3x3 = 9; apart: union 6, enclosing 4x2 = 8
    assert torch.allclose(box_iou(a, b), torch.tensor([[1 / 7, 0.0, 1.0]]))
    assert torch.allclose(generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9, 0 - 2 / 8, 1.0]]))
    assert torch.allclose(box_area(b), torch.tensor([4.0, 2.0, 4.0]))
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    assert torch.allclose(box_cxcywh_to_xyxy(cxcywh), torch.tensor([[0.4, 0.3, 0.6, 0.7]]))
    boxes = torch.rand(5, 4)
    assert torch.allclose(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes, atol=1e-6)


def test_matcher_finds_the_cheapest_assignment_by_brute_force():
    torch.manual_seed(3)
    logits, boxes = torch.randn(2, 5, 4), torch.rand(2, 5, 4) * 0.5 + 0.1
    labels = some_labels(3, (3, 2))
    matches = hungarian_match(logits, boxes, labels)
    for i, ((rows, cols), target) in enumerate(zip(matches, labels)):
        k = len(target["boxes"])
        prob = logits[i].softmax(-1)
        pred, true = box_cxcywh_to_xyxy(boxes[i]), box_cxcywh_to_xyxy(target["boxes"])
        cost = (-prob[:, target["class_labels"]] + 5 * torch.cdist(boxes[i], target["boxes"], p=1)
                - 2 * generalized_box_iou(pred, true))                    # (queries, targets)
        best = min(itertools.permutations(range(5), k), key=lambda p: sum(cost[q, t].item() for t, q in enumerate(p)))
        assert len(rows) == k and sorted(cols.tolist()) == list(range(k))
        assert dict(zip(cols.tolist(), rows.tolist())) == dict(enumerate(best))


def test_sine_positions_match_transformers():
    mask = pixel_mask(3, 7, 9).bool()
    for m in (mask, torch.ones(2, 5, 6, dtype=torch.bool)):
        ours = sine_positions_2d(m, 32)
        ref = DetrSinePositionEmbedding(16, normalize=True)(m.shape[:1] + (32,) + m.shape[1:], "cpu", torch.float32, m)
        assert ours.shape == (len(m), 32, *m.shape[1:]) and (ours - ref).abs().max() <= 1e-5
        ref = DeformableDetrSinePositionEmbedding(16, normalize=True)(m.shape[:1] + (32,) + m.shape[1:], "cpu",
                                                                      torch.float32, m)
        assert (sine_positions_2d(m, 32, offset=-0.5) - ref).abs().max() <= 1e-5  # Deformable DETR's cell centres
    assert abs(ours[0, 0, -1, -1].item() - math.sin(2 * math.pi * 5 / (5 + 1e-6))) < 1e-5  # y at the last row: 2 pi
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_positions_2d(mask, 30)


def test_cross_attention_maps_are_captured():
    model = qkv.models.build("detr-96-small").eval()
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        plain = model(x)
        with capture(model, "*crossattention") as seen:
            out = model(x)
    maps = seen.maps()
    assert len(maps) == 3 and list(seen.attentions) == [f"decoder.layers.{i}.crossattention" for i in range(3)]
    assert maps[0].shape == (2, 4, 20, 6 * 6)  # (batch, heads, queries, h*w): 96 / 16 = 6
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, 4, 20))
    assert (out["logits"] - plain["logits"]).abs().max() <= 1e-5  # capturing changes nothing


def test_presets_config_and_save_load(tmp_path):
    model = qkv.models.build("detr-96-small")
    counts = {"all": sum(p.numel() for p in model.parameters()),
              "backbone": sum(p.numel() for p in model.backbone.parameters())}
    assert 0.3e6 <= counts["backbone"] <= 1e6 and counts["all"] < 2e6, counts
    assert qkv.models.MODELS["detr"].role == "object_detector" and qkv.DETR is DETR
    r50 = qkv.models.build("detr-resnet-50")
    frozen_bn = sum(m.weight.numel() * 2 for m in r50.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert sum(p.numel() for p in r50.parameters()) - frozen_bn == 41_524_768  # facebook/detr-resnet-50's count
    qkv.save_model(model, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "detr" and saved["backbone"]["stem"] == "7x7" and saved["backbone"]["depths"] == [1, 2, 1]
    loaded, _ = qkv.load(tmp_path)
    assert isinstance(loaded, DETR) and loaded.config == model.config
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        assert torch.equal(model.eval()(x)["pred_boxes"], loaded(x)["pred_boxes"])
    for fields, message in ((dict(backbone="resnet"), "backbone must be a table"),
                            (dict(backbone=dict(depth=[1])), "backbone has unknown key.* depth; valid: embedding_size"),
                            (dict(backbone=dict(hidden_sizes=[8, 16], depths=[1])), "backbone: .*one entry per stage"),
                            (dict(d_model=130), "d_model=130 must be a multiple of 4"),
                            (dict(eos_coefficient=0.0), "eos_coefficient in")):
        with pytest.raises(ConfigError, match=message):
            qkv.models.build("detr-96-small", **fields)


def test_frozen_batch_norm_stays_frozen():
    model = qkv.models.build("detr-96-small", freeze_backbone_bn=True).train()
    bn = model.backbone.embedder.embedder.normalization
    assert not bn.training and not bn.weight.requires_grad and model.encoder.training
    before = bn.running_mean.clone()
    model(torch.randn(2, 1, 96, 96))
    assert torch.equal(bn.running_mean, before)


def test_bad_inputs_say_what_the_model_expects():
    model = qkv.models.build("detr-96-small").eval()
    with pytest.raises(ValueError, match="grey images with 1 channel"):
        model(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match="image size 12x96 is too small: the backbone downsamples by 16"):
        model(torch.randn(1, 1, 12, 96))
    with pytest.raises(ValueError, match=r"pixel_mask must be \(batch, height, width\) = \(1, 96, 96\)"):
        model(torch.randn(1, 1, 96, 96), torch.ones(1, 1, 96, 96))
    with pytest.raises(ValueError, match="pixel_mask leaves an image no real cell"):
        model(torch.randn(1, 1, 96, 96), torch.zeros(1, 96, 96))
    x = torch.randn(2, 1, 96, 96)
    with pytest.raises(ValueError, match="labels must be a list of 2 dicts"):
        model(x, labels=some_labels(10, (1,)))
    with pytest.raises(ValueError, match=r"labels\[1\]: class_labels must lie in 0..9"):
        model(x, labels=[some_labels(10, (1,))[0], {"class_labels": torch.tensor([10]), "boxes": torch.rand(1, 4)}])


def test_a_small_detr_learns_a_batch():
    """Gradients reach every part: 25 steps on 4 images lower the loss by more than a third."""
    model = qkv.models.build("detr-96-small", backbone=dict(embedding_size=8, hidden_sizes=[8, 16, 32], depths=[1, 1, 1]),
                             d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                             num_queries=6).train()
    x, labels = torch.randn(4, 1, 96, 96), some_labels(10, (1, 2, 3, 1))
    losses = fit_a_batch(model, x, labels, steps=25, lr=1e-3)
    assert all(p.grad is not None for p in model.parameters()) and losses[-1] < 0.66 * losses[0], losses
