"""qkv's Deformable DETR against transformers' DeformableDetrForObjectDetection (pure-PyTorch
path, ResNet backbone, small random configs with batch-norm statistics perturbed): outputs
with and without iterative box refinement and two-stage, both conversion directions, the
focal set loss with auxiliary losses and its gradients; and on its own: presets, the
sampling points of chosen queries, capture, save/load, bad inputs, learning a batch and the
detection task training it unchanged."""
import json
from dataclasses import replace

import pytest
import torch
import transformers

import qkv
from qkv.cli import main
from qkv.config import ConfigError
from qkv.models.deformable_detr import DeformableDETR, DeformableDETRConfig
from qkv.nn import capture, capture_sampling
from qkv.train import evaluate_run
from qkv.train.metrics import read_metrics

from .conftest import ROOT, fit_a_batch, perturbed, some_labels

CONFIGS = {  # transformers DeformableDetrConfig fields, ResNetConfig fields, image height, width
    "basic-1ch": (dict(num_channels=1, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=2,
                       decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=48, num_queries=7, num_labels=3,
                       num_feature_levels=3, encoder_n_points=2, decoder_n_points=3),
                  dict(num_channels=1, layer_type="basic", embedding_size=8, hidden_sizes=[8, 16, 24], depths=[1, 2, 1],
                       out_features=["stage2", "stage3"]), 64, 80),
    "bottleneck-gelu-3ch": (dict(num_channels=3, d_model=64, encoder_layers=1, decoder_layers=2,
                                 encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=32,
                                 decoder_ffn_dim=64, num_queries=5, num_labels=4, num_feature_levels=3,
                                 encoder_n_points=3, decoder_n_points=2, activation_function="gelu"),
                            dict(num_channels=3, layer_type="bottleneck", embedding_size=8, hidden_sizes=[16, 32, 24],
                                 depths=[1, 1, 2], downsample_in_bottleneck=True,
                                 out_features=["stage1", "stage2", "stage3"]), 72, 56),
}
VARIANTS = [("basic-1ch", {}), ("basic-1ch", dict(with_box_refine=True)),
            ("bottleneck-gelu-3ch", {}), ("bottleneck-gelu-3ch", dict(with_box_refine=True, two_stage=True))]
VARIANT_IDS = ["basic", "basic-refine", "bottleneck", "bottleneck-refine-two-stage"]




def hf_model(name, **extra):
    fields, backbone, h, w = CONFIGS[name]
    config = transformers.DeformableDetrConfig(
        disable_custom_kernels=True, use_timm_backbone=False, use_pretrained_backbone=False, dropout=0.0,
        backbone_config=transformers.ResNetConfig(**backbone), **{**fields, **extra},
        two_stage_num_proposals=fields["num_queries"])
    x = torch.randn(3, fields["num_channels"], h, w)
    return perturbed(transformers.DeformableDetrForObjectDetection(config), 0.15), x




def differences(ours: dict, theirs) -> dict:
    return {"logits": (ours["logits"] - theirs.logits).abs().max().item(),
            "pred_boxes": (ours["pred_boxes"] - theirs.pred_boxes).abs().max().item()}


@pytest.mark.parametrize("name,options", VARIANTS, ids=VARIANT_IDS)
def test_from_hf_matches_transformers(tmp_path, name, options):
    hf, x = hf_model(name, **options)
    hf.save_pretrained(tmp_path)
    model = qkv.from_hf(tmp_path)
    assert isinstance(model, DeformableDETR) and model.config.with_box_refine == bool(options)
    with torch.no_grad():
        theirs, ours = hf(x), model(x)
    diffs = differences(ours, theirs)
    print(name, options, "max |qkv - transformers|", diffs)
    assert max(diffs.values()) <= 1e-4
    assert theirs.logits.abs().max() > 0.1 and theirs.pred_boxes.std(1).mean() > 0.01  # not trivially equal
    with torch.no_grad():  # every decoder layer's predictions, not only the last
        for i, (layer, hidden) in enumerate(zip(ours["aux"], theirs.intermediate_hidden_states.unbind(1))):
            assert (layer["logits"] - hf.class_embed[i](hidden)).abs().max() <= 1e-4


@pytest.mark.parametrize("options", [{}, dict(with_box_refine=True), dict(with_box_refine=True, two_stage=True)],
                         ids=["plain", "refine", "refine-two-stage"])
def test_save_hf_round_trips(tmp_path, options):
    config = DeformableDETRConfig(
        image_size=64, num_channels=3, num_labels=4, class_names=["cat", "dog", "cow", "owl"],
        backbone=dict(embedding_size=8, hidden_sizes=[8, 16, 32], depths=[1, 1, 1], layer_type="basic"),
        backbone_stages=[1, 2], num_feature_levels=3, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_n_points=2, decoder_n_points=3, num_queries=6, dropout=0.0, image_mean=[0.4, 0.5, 0.6],
        image_std=[0.2, 0.3, 0.4], **options)
    model = perturbed(DeformableDETR(config), 0.15)
    qkv.save_hf(model, tmp_path)
    hf = transformers.AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    assert isinstance(hf, transformers.DeformableDetrForObjectDetection) and hf.config.id2label[2] == "cow"
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        diffs = differences(model(x), hf(x))
    print(options, "max |qkv - transformers|", diffs)
    assert max(diffs.values()) <= 1e-4
    back = qkv.from_hf(tmp_path)
    assert back.config == replace(config, class_loss_coefficient=1.0)  # transformers weighs the focal term 1
    assert qkv.load(tmp_path)[0].config == back.config  # qkv.load tells a Hugging Face directory from its own
    mine = model.state_dict()
    for name, t in back.state_dict().items():
        assert torch.equal(t, mine[name]) or name.endswith("num_batches_tracked"), name


@pytest.mark.parametrize("name,options", VARIANTS[:2] + VARIANTS[3:], ids=VARIANT_IDS[:2] + VARIANT_IDS[3:])
def test_loss_and_gradients_match_transformers(tmp_path, name, options):
    """The focal set loss with Hungarian matching and auxiliary losses, term by term, and the
    gradients it sends into the transformer; two-stage adds the paper's proposal loss, which
    transformers leaves out."""
    hf, x = hf_model(name, auxiliary_loss=True, **options)
    hf.save_pretrained(tmp_path)
    model = qkv.from_hf(tmp_path)
    labels = some_labels(hf.config.num_labels)
    theirs, ours = hf(x, labels=labels), model(x, labels=labels)
    two_stage = options.get("two_stage", False)
    proposals = ours["enc_outputs"]["loss"] if two_stage else 0.0
    diffs = {"loss": abs(ours["loss"].item() - proposals - theirs.loss.item())}
    diffs.update({k: (ours[k] - theirs.loss_dict[k]).abs().item() for k in ("loss_ce", "loss_bbox", "loss_giou")})
    diffs.update({f"{k}_{i}": (layer[k] - theirs.loss_dict[f"{k}_{i}"]).abs().item() for i, layer in
                  enumerate(ours["aux"]) for k in ("loss_ce", "loss_bbox", "loss_giou")})
    print(name, options, "loss", theirs.loss.item(), "max |qkv - transformers|", max(diffs.values()))
    assert max(diffs.values()) <= 1e-4 and theirs.loss > 1
    assert (ours["cardinality_error"] - theirs.loss_dict["cardinality_error"]).abs() <= 1e-6
    if two_stage:
        pixels = sum(level[0, 0].numel() for level in model.levels(x))  # one proposal per encoder pixel
        assert proposals > 0 and ours["enc_outputs"]["logits"].shape[1] == pixels == 18 * 14 + 9 * 7 + 5 * 4
        return
    (ours["loss"]).backward()
    theirs.loss.backward()
    ours_p, theirs_p = dict(model.named_parameters()), dict(hf.named_parameters())
    for mine, their in (("encoder.layers.0.self_attn.sampling_offsets.weight",
                         "model.encoder.layers.0.self_attn.sampling_offsets.weight"),
                        ("decoder.layers.1.encoder_attn.value_proj.weight",
                         "model.decoder.layers.1.encoder_attn.value_proj.weight"),
                        ("decoder.layers.0.mlp.c_fc.weight", "model.decoder.layers.0.mlp.fc1.weight"),
                        ("level_embed", "model.level_embed"), ("input_proj.0.0.weight", "model.input_proj.0.0.weight"),
                        ("query_position_embeddings.weight", "model.query_position_embeddings.weight")):
        assert torch.allclose(ours_p[mine].grad, theirs_p[their].grad, atol=1e-5, rtol=1e-4), mine
    q, k, v = (theirs_p[f"model.decoder.layers.1.self_attn.{p}_proj.weight"].grad for p in "qkv")
    assert torch.allclose(ours_p["decoder.layers.1.self_attn.c_attn.weight"].grad, torch.cat([q, k, v]), atol=1e-5)


def test_presets_and_save_load(tmp_path):
    paper = qkv.models.build("deformable-detr")
    bn = sum(m.weight.numel() * 2 for m in paper.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert sum(p.numel() for p in paper.parameters()) - bn == 40_069_665  # transformers' (its batch norm frozen): "40M"
    model = qkv.models.build("deformable-detr-96-small").eval()
    detr = qkv.models.build("detr-96-small")
    ours, theirs = (sum(p.numel() for p in m.parameters()) for m in (model, detr))
    assert model.config.backbone == detr.config.backbone and model.config.d_model == detr.config.d_model == 128
    assert model.config.num_queries == detr.config.num_queries and abs(ours / theirs - 1) < 0.1, (ours, theirs)
    assert qkv.models.MODELS["deformable_detr"].role == "object_detector" and qkv.DeformableDETR is DeformableDETR
    x = torch.randn(2, 1, 96, 96)
    assert [tuple(level.shape[-2:]) for level in model.levels(x)] == [(12, 12), (6, 6), (3, 3)]
    with torch.no_grad():
        out = model(x)
    assert out["logits"].shape == (2, 20, 10) and out["pred_boxes"].shape == (2, 20, 4) and len(out["aux"]) == 2
    for options in ({}, dict(with_box_refine=True, two_stage=True)):
        model = qkv.models.build("deformable-detr-96-small", **options).eval()
        qkv.save_model(model, tmp_path / str(len(options)))
        saved = json.loads((tmp_path / str(len(options)) / "config.json").read_text())
        assert saved["model_type"] == "deformable_detr" and saved["backbone_stages"] == [1, 2]
        loaded, _ = qkv.load(tmp_path / str(len(options)))
        assert isinstance(loaded, DeformableDETR) and loaded.config == model.config
        with torch.no_grad():
            assert torch.equal(model(x)["pred_boxes"], loaded(x)["pred_boxes"])
        shared = loaded.class_embed[0] is loaded.class_embed[1]  # one head for every layer, unless refining
        assert shared != bool(options)


def test_sampling_points_of_chosen_queries():
    """What the analysis draws: where each query looked, per level, head and point, as (x, y)
    in the image's [0, 1] coordinates. At initialisation each head's points lie along its own
    direction around the query's reference point, so their mean is that point."""
    model = qkv.models.build("deformable-detr-96-small").eval()
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        plain = model(x)
        with capture_sampling(model, "decoder.layers.*.encoder_attn") as seen:
            out = model(x)
        reference = model.reference_points(model.query_position_embeddings.weight[:, :128]).sigmoid()
    assert torch.equal(out["logits"], plain["logits"])  # capturing changes nothing
    assert list(seen) == [f"decoder.layers.{i}.encoder_attn" for i in range(3)]
    points, weights = seen["decoder.layers.2.encoder_attn"][0].query(1, 7)
    assert points.shape == (3, 4, 4, 2) and weights.shape == (3, 4, 4)  # (levels, heads, points, 2)
    assert torch.allclose(weights.sum((0, 2)), torch.ones(4))
    assert torch.allclose(points.mean((1, 2)), reference[7].expand(3, 2), atol=1e-6)
    assert points[0].min() > -4 / 12 and points[0].max() < 1 + 4 / 12  # the finest level: 4 of its 12 pixels at most
    with capture_sampling(model, "encoder.layers.0.self_attn") as seen:
        model(x)
    assert seen["encoder.layers.0.self_attn"][0].locations.shape == (2, 144 + 36 + 9, 4, 3, 4, 2)
    with capture(model, "decoder.layers.*.self_attn", hidden="encoder.layers.*") as looked:
        model(x)
    assert looked.maps()[0].shape == (2, 4, 20, 20) and looked.hidden["encoder.layers.2"][0].shape == (2, 189, 128)


def test_bad_inputs_say_what_the_model_expects(tmp_path):
    model = qkv.models.build("deformable-detr-96-small").eval()
    with pytest.raises(ValueError, match="grey images with 1 channel"):
        model(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match="image size 12x96 is too small: the backbone downsamples by 16"):
        model(torch.randn(1, 1, 12, 96))
    with pytest.raises(ValueError, match="takes unpadded batches: pixel_mask must be None"):
        model(torch.randn(1, 1, 96, 96), torch.ones(1, 96, 96).tril())
    assert model(torch.randn(1, 1, 96, 96), torch.ones(1, 96, 96))["logits"].shape == (1, 20, 10)
    with pytest.raises(ValueError, match="two-stage needs at least num_queries=20 encoder pixels"):
        two_stage = qkv.models.build("deformable-detr-96-small", with_box_refine=True, two_stage=True).eval()
        two_stage(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="labels must be a list of 2 dicts"):
        model(torch.randn(2, 1, 96, 96), labels=some_labels(10, (1,)))
    with pytest.raises(ValueError, match=r"labels\[0\] must be a dict with class_labels"):
        model(torch.randn(1, 1, 96, 96), labels=[{"boxes": torch.rand(1, 4)}])
    for fields, message in ((dict(two_stage=True), "two_stage needs with_box_refine"),
                            (dict(d_model=144), "d_model=144 must be a multiple of 32"),
                            (dict(backbone_stages=[2, 1]), "backbone_stages must be increasing indices of the .* 3"),
                            (dict(backbone_stages=[1, 3]), "backbone_stages must be increasing"),
                            (dict(num_feature_levels=1), "num_feature_levels=1 is fewer than backbone_stages"),
                            (dict(backbone=dict(depth=[1])), "backbone has unknown key.* depth"),
                            (dict(activation_function="tanh"), "activation_function must be one of")):
        with pytest.raises(ConfigError, match=message):
            qkv.models.build("deformable-detr-96-small", **fields)
    hf, _ = hf_model("basic-1ch")
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for change, message in ((dict(position_embedding_type="learned"), "not know how to honour.*position_embedding"),
                            (dict(backbone_config=None, use_timm_backbone=True), "a transformers ResNet backbone")):
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ConfigError, match=message):
            qkv.from_hf(tmp_path)
    untied, _ = hf_model("basic-1ch", with_box_refine=True, tie_word_embeddings=False)  # refining copies differ
    untied.save_pretrained(tmp_path / "untied")
    with pytest.raises(ConfigError, match="model.decoder.bbox_embed.0.layers.0.weight differs from its other copies"):
        qkv.from_hf(tmp_path / "untied")
    with pytest.raises(ConfigError, match="only the 7x7 stem"):
        qkv.save_hf(qkv.models.build("deformable-detr-96-small", backbone=dict(stem="3x3", hidden_sizes=[32, 64, 128],
                                                                              depths=[1, 1, 1])), tmp_path / "x")


@pytest.mark.parametrize("options", [dict(with_box_refine=True), dict(with_box_refine=True, two_stage=True)],
                         ids=["refine", "two-stage"])
def test_a_small_deformable_detr_learns_a_batch(options):
    """Gradients reach every part: 20 steps on 4 images lower the loss by more than a third."""
    model = qkv.models.build("deformable-detr-96-small", backbone=dict(embedding_size=8, hidden_sizes=[8, 16, 32],
                             depths=[1, 1, 1]), d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64,
                             decoder_ffn_dim=64, num_queries=8, **options).train()
    x, labels = torch.randn(4, 1, 96, 96), some_labels(10, (1, 2, 3, 1))
    losses = fit_a_batch(model, x, labels, steps=20, lr=2e-3)
    assert all(p.grad is not None for p in model.parameters()) and losses[-1] < 0.66 * losses[0], losses


def test_the_detection_task_trains_it(detection_data, tmp_path):
    """The detection task takes any object detector: a shrunk deformable-detr-96-small trains,
    validates (COCO mAP), evaluates and loads back, with nothing in the task changed."""
    args = ["train", str(ROOT / "configs" / "detr-mnist-detection.toml"), "--no-progress", "--set",
            f"out_dir={tmp_path / 'run'}"]
    for item in ("model.preset=deformable-detr-96-small", "model.d_model=32", "model.encoder_layers=1",
                 "model.decoder_layers=1", "model.encoder_ffn_dim=64", "model.decoder_ffn_dim=64",
                 "model.num_queries=8", "model.with_box_refine=true", "train.batch_size=4", "train.max_steps=2",
                 "train.warmup_steps=1", "train.log_interval=1", "train.eval_interval=2", "train.eval_batches=1",
                 "train.ckpt_interval=2"):
        args += ["--set", item]
    assert main(args) == 0
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_map" in r] == [2]
    result = evaluate_run(tmp_path / "run", split="test")
    assert result["images"] == 6 and 0.0 <= result["map"] <= 1.0
    model, _ = qkv.load(tmp_path / "run")
    assert isinstance(model, DeformableDETR) and model.config.with_box_refine and model.config.num_labels == 10
