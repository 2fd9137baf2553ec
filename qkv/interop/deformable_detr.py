"""Hugging Face ``DeformableDetrForObjectDetection`` <-> ``qkv.DeformableDETR``.

transformers' pure-PyTorch path (``disable_custom_kernels=True``) with a ResNet backbone
given as ``backbone_config=ResNetConfig(...)`` (``use_timm_backbone=False``); the timm
backbones of the SenseTime checkpoints have no table here. The table is a rename, written
as the name each qkv tensor has in a Hugging Face directory (transformers 5 writes, and
reads, the 4.x names: ``conv_encoder``, ``fc1``, ``out_proj``; the 5.x names are read too),
plus one join: the decoder's self-attention Q, K, V are one ``c_attn`` in qkv.

- Heads: without box refinement qkv shares one class and one box head across the decoder
  layers (the paper's), which transformers ties and saves as ``class_embed.0`` /
  ``bbox_embed.0``. With refinement each layer has its own, and the decoder refines with
  the same box heads; transformers keeps a reference under ``model.decoder.bbox_embed``
  (and, two-stage, ``model.decoder.class_embed``). Reading takes each layer's head from the
  first of ``class_embed.{i}``, ``model.decoder.class_embed.{i}``, ``class_embed.0``
  present, and refuses checkpoints whose copies differ (untied heads, which qkv cannot
  express). Writing writes every name, with ``tie_word_embeddings`` true except for
  refinement without two-stage: there transformers 5 would tie every class head to the
  first, so it is written false (the same outputs; but fine-tuned in transformers the
  decoder's refining copies of the box heads would then stay as they are).
- Batch norm: transformers freezes the backbone's (statistics as buffers, no
  ``num_batches_tracked``); in eval mode it is qkv's ``nn.BatchNorm2d``.
- Loss: transformers weighs the focal term 1 (``class_loss_coefficient = 1`` on loading) and,
  two-stage, has no loss on the proposals; qkv adds the paper's (``enc_outputs``).
- Not converted: padded batches (``pixel_mask``), learned positions, DC5 (``dilation``).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError
from ..models.deformable_detr import DeformableDETR, DeformableDETRConfig
from . import detr, resnet
from .detr import LEGACY
from .hf import GENERIC_CONFIG_KEYS, labels_from_hf, labels_to_hf

MODEL_TYPE = "deformable_detr"
MAPPED = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
          "encoder_ffn_dim", "decoder_ffn_dim", "encoder_n_points", "decoder_n_points", "num_feature_levels",
          "activation_function", "dropout", "with_box_refine", "two_stage", "auxiliary_loss", "class_cost",
          "bbox_cost", "giou_cost", "bbox_loss_coefficient", "giou_loss_coefficient", "focal_alpha")
HONOURED = {  # fields that change nothing qkv computes, at the values qkv can honour (None: any value)
    "backbone_config": None, "num_queries": None, "two_stage_num_proposals": None, "num_labels": None,
    "num_channels": None, "init_std": None, "init_xavier_std": None, "return_intermediate": None,
    "max_position_embeddings": None, "mask_loss_coefficient": None, "dice_loss_coefficient": None,
    "eos_coefficient": None, "disable_custom_kernels": None, "use_pretrained_backbone": None,
    "tie_word_embeddings": None, "backbone": None, "backbone_kwargs": None, "use_timm_backbone": False,
    "dilation": False, "position_embedding_type": "sine", "attention_dropout": 0.0, "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
}
RENAMES = [  # qkv name -> the Hugging Face directory's, applied in order
    (r"^backbone\.", "model.backbone.conv_encoder.model."),
    (r"^(encoder|decoder|input_proj|level_embed|query_position_embeddings|reference_points|enc_output|pos_trans)",
     r"model.\1"),
    (r"\.mlp\.c_fc\.", ".fc1."), (r"\.mlp\.c_proj\.", ".fc2."), (r"\.self_attn\.c_proj\.", ".self_attn.out_proj."),
]
HEAD = re.compile(r"^(class_embed|bbox_embed)\.(\d+)\.(.*)$")
QKV = re.compile(r"^(decoder\.layers\.\d+\.self_attn)\.c_attn\.(weight|bias)$")


def hf_name(name: str) -> str:
    for pattern, replacement in RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def _number(x: float):
    return int(x) if float(x).is_integer() else x  # transformers types the costs as int


def config_from_hf(hf: dict) -> DeformableDETRConfig:
    backbone = hf.get("backbone_config") or {}
    if backbone.get("model_type") != "resnet":
        raise ConfigError("qkv's Deformable DETR converts checkpoints with a transformers ResNet backbone "
                          "(use_timm_backbone=false, backbone_config of model_type resnet); this one has "
                          f"{hf.get('backbone') or backbone.get('model_type') or 'a timm backbone'!r}")
    wrong = {k: hf[k] for k in hf if k not in GENERIC_CONFIG_KEYS and k not in MAPPED and
             (k not in HONOURED or HONOURED[k] is not None and hf[k] not in (HONOURED[k], None))}
    if wrong:
        raise ConfigError(f"Deformable DETR config fields qkv does not know how to honour: {wrong}")
    stages = [int(s[len("stage"):]) - 1 for s in backbone.get("out_features") or [f"stage{len(backbone['depths'])}"]]
    labels = labels_from_hf(hf)
    try:
        return DeformableDETRConfig(
            **{k: hf[k] for k in MAPPED if k in hf}, num_channels=backbone.get("num_channels", 3),
            backbone={k: backbone[k] for k in resnet.MAPPED if k in backbone and k != "num_channels"},
            backbone_stages=stages, num_labels=len(labels), class_names=labels,
            num_queries=hf.get("two_stage_num_proposals" if hf.get("two_stage") else "num_queries", 300),
            class_loss_coefficient=1.0)  # transformers weighs the focal term 1
    except ValueError as e:
        raise ConfigError(f"this Deformable DETR config has no qkv twin: {e}") from e


def config_to_hf(c: DeformableDETRConfig, eos_token_id: int | None = None) -> dict:
    b = c.backbone_config()
    if b.stem != "7x7":
        raise ConfigError(f"Hugging Face's ResNet has only the 7x7 stem with max-pool; a Deformable DETR whose "
                          f"backbone has stem={b.stem!r} has no twin to save as")
    backbone = {"model_type": "resnet", "num_channels": c.num_channels, **{k: getattr(b, k) for k in resnet.MAPPED
                if k != "num_channels"}, "out_features": [f"stage{s + 1}" for s in c.backbone_stages],
                "out_indices": [s + 1 for s in c.backbone_stages]}
    values = {k: _number(v) if "cost" in k or "coefficient" in k else v for k, v in
              ((k, getattr(c, k)) for k in MAPPED)}
    return {"architectures": ["DeformableDetrForObjectDetection"], "model_type": MODEL_TYPE, **values,
            "num_queries": c.num_queries, "two_stage_num_proposals": c.num_queries, "num_channels": c.num_channels,
            "backbone_config": backbone, "use_timm_backbone": False, "use_pretrained_backbone": False,
            "disable_custom_kernels": True, "tie_word_embeddings": c.two_stage or not c.with_box_refine,
            "position_embedding_type": "sine",
            "attention_dropout": 0.0, "activation_dropout": 0.0, **labels_to_hf(c.label_names)}


def state_dict_from_hf(model: DeformableDETR, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    legacy = {}
    for name, t in sd.items():  # transformers 5's names -> the 4.x names it saves
        for pattern, repl in LEGACY:
            name = re.sub(pattern, repl, name)
        legacy[name] = t
    out, used = {}, set()

    def take(*names: str) -> Tensor:
        for name in names:
            if name in legacy:
                used.add(name)
                return legacy[name]
        raise ConfigError(f"the checkpoint lacks {names[0]}; it is not a Deformable DETR of this config")

    for name, t in model.state_dict().items():
        if name.endswith("num_batches_tracked"):  # frozen batch norm keeps no count of the batches seen
            out[name] = torch.tensor(0)
        elif (m := QKV.match(name)):
            out[name] = torch.cat([take(f"{hf_name(m[1])}.{p}_proj.{m[2]}") for p in "qkv"])
        elif (m := HEAD.match(name)):
            kind, i, rest = m[1], int(m[2]), m[3]
            out[name] = take(f"{kind}.{i}.{rest}", f"model.decoder.{kind}.{i}.{rest}", f"{kind}.0.{rest}")
        else:
            out[name] = take(hf_name(name))
    for name in [n for n in out if HEAD.match(n)]:  # one head per name in qkv: its copies must agree
        kind, i, rest = HEAD.match(name).groups()
        shared = None if model.config.with_box_refine else f"{kind}.0.{rest}"
        for copy in (f"{kind}.{i}.{rest}", f"model.decoder.{kind}.{i}.{rest}", shared):
            if copy in legacy and not torch.equal(legacy[copy], out[name]):
                raise ConfigError(f"this checkpoint's {copy} differs from its other copies of {name}: its heads are "
                                  "untied, which qkv's Deformable DETR cannot express (one head per layer, shared "
                                  "without box refinement, refining with the same box heads)")
    heads = re.compile(r"^(model\.decoder\.)?(class_embed|bbox_embed)\.")  # copies of heads read
    unused = sorted(k for k in set(legacy) - used if not heads.match(k) and not k.endswith("num_batches_tracked"))
    if unused:
        raise ConfigError(f"checkpoint tensors with no place in qkv's Deformable DETR: {', '.join(unused[:5])}")
    return out


def state_dict_to_hf(model: DeformableDETR) -> dict[str, Tensor]:
    c, out = model.config, {}
    for name, t in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        if (m := QKV.match(name)):
            for p, part in zip("qkv", t.chunk(3)):
                out[f"{hf_name(m[1])}.{p}_proj.{m[2]}"] = part
        elif (m := HEAD.match(name)):
            out[name] = t
            if c.with_box_refine and m[1] == "bbox_embed" or c.two_stage and m[1] == "class_embed":
                out[f"model.decoder.{name}"] = t  # transformers' decoder keeps its own reference
        else:
            out[hf_name(name)] = t
    return {k: v.clone() for k, v in out.items()}  # shared heads: one tensor per name


def from_hf(hf_config: dict, state_dict: dict[str, Tensor]) -> DeformableDETR:
    archs = hf_config.get("architectures") or ["DeformableDetrForObjectDetection"]
    if "DeformableDetrForObjectDetection" not in archs:
        raise ConfigError(f"qkv loads DeformableDetrForObjectDetection checkpoints (the heads included), not {archs}")
    model = DeformableDETR(config_from_hf(hf_config))
    model.load_state_dict(state_dict_from_hf(model, state_dict), strict=True)
    return model


read_preprocessor = resnet.read_preprocessor  # normalisation; image size from size.shortest_edge


def write_preprocessor(model: DeformableDETR, directory: Path) -> None:
    detr.write_preprocessor(model, directory, "DeformableDetrImageProcessor")
