"""Hugging Face DETR (``DetrForObjectDetection`` with a transformers ResNet backbone) <-> ``qkv.DETR``.

A table of renames plus two joins: Hugging Face keeps separate q/k/v projections, qkv's
attention a fused ``c_attn`` (self-attention: Q, K, V; cross-attention: K, V, with Q in
``q_attn``). The backbone is Hugging Face's ``ResNetBackbone``, whose names are qkv's ResNet's.

- Batch norm: Hugging Face freezes the backbone's (``DetrFrozenBatchNorm2d``: running
  statistics and affine as buffers, no ``num_batches_tracked``). In eval mode it is the same
  function as qkv's ``nn.BatchNorm2d``; loading sets ``freeze_backbone_bn=True`` (fine-tuning
  a converted model keeps it frozen, as Hugging Face would), saving writes the statistics.
- Layouts: transformers 5 saves (and loads) the 4.x names (``backbone.conv_encoder``,
  ``out_proj``, ``layers.N.fc1``); both the 4.x and the 5.x names are read, the 4.x ones written.
- ``auxiliary_loss``: transformers' decoder, when it is on, feeds each layer the previous
  layer's output *after* the shared LayerNorm (and normalises the last one twice); the
  paper's code and qkv normalise only the copies that go to the heads. The two forwards are
  the same with it off, so ``save_hf`` writes ``auxiliary_loss: false``; loading a config
  with it on warns that transformers' outputs differ from qkv's (and the paper's).
- timm backbones (``use_timm_backbone``, e.g. the Hub's facebook/detr-resnet-50) and DC5
  (``dilation``) have no table here; Hugging Face's ResNet has only the 7x7 stem.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError
from ..files import atomic_write_text
from ..models.detr import BACKBONE_FIELDS, DETR, DETRConfig
from . import resnet, vit
from .hf import GENERIC_CONFIG_KEYS, joined, labels_from_hf, labels_to_hf

MODEL_TYPE = "detr"
MAPPED = ("num_channels", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
          "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "num_queries", "activation_function",
          "dropout", "class_cost", "bbox_cost", "giou_cost", "bbox_loss_coefficient", "giou_loss_coefficient",
          "eos_coefficient")
# training-only or segmentation-only settings, and the backbone choice checked below
INERT = GENERIC_CONFIG_KEYS | {"num_labels", "attention_dropout", "activation_dropout", "encoder_layerdrop",
                               "decoder_layerdrop", "init_std", "init_xavier_std", "mask_loss_coefficient",
                               "dice_loss_coefficient", "auxiliary_loss", "use_pretrained_backbone",
                               "backbone_config", "use_timm_backbone", "backbone", "backbone_kwargs",
                               "position_embedding_type", "dilation"}
BACKBONE_HF, BACKBONE_QKV = "model.backbone.conv_encoder.model.", "backbone."
LEGACY = [(r"^model\.backbone\.model\.", BACKBONE_HF), (r"\.o_proj\.", ".out_proj."),  # 5.x names -> 4.x names
          (r"layers\.(\d+)\.mlp\.fc([12])\.", r"layers.\1.fc\2.")]
RENAMES = {  # Hugging Face (4.x names) -> qkv; {i} is the layer
    "model.input_projection": "input_projection",
    "model.query_position_embeddings": "query_position_embeddings",
    "model.decoder.layernorm": "decoder.layernorm",
    "class_labels_classifier": "class_labels_classifier",
    "bbox_predictor.layers.{i}": "bbox_predictor.layers.{i}",
    **{f"model.{part}.layers.{{i}}.{theirs}": f"{part}.layers.{{i}}.{ours}" for part in ("encoder", "decoder")
       for theirs, ours in (("self_attn.out_proj", "attn.c_proj"), ("self_attn_layer_norm", "ln_1"),
                            ("fc1", "mlp.c_fc"), ("fc2", "mlp.c_proj"), ("final_layer_norm", "ln_2"))},
    "model.decoder.layers.{i}.encoder_attn.q_proj": "decoder.layers.{i}.crossattention.q_attn",
    "model.decoder.layers.{i}.encoder_attn.out_proj": "decoder.layers.{i}.crossattention.c_proj",
    "model.decoder.layers.{i}.encoder_attn_layer_norm": "decoder.layers.{i}.ln_cross_attn",
}


def _joins(c: DETRConfig):
    """(qkv's fused projection, Hugging Face's prefix, its parts in order) for every attention."""
    for part, n in (("encoder", c.encoder_layers), ("decoder", c.decoder_layers)):
        for i in range(n):
            yield f"{part}.layers.{i}.attn.c_attn", f"model.{part}.layers.{i}.self_attn.", ("q_proj", "k_proj", "v_proj")
            if part == "decoder":
                yield (f"decoder.layers.{i}.crossattention.c_attn", f"model.decoder.layers.{i}.encoder_attn.",
                       ("k_proj", "v_proj"))


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)") + r"\.(?P<kind>weight|bias)$")


FORWARD = [(_pattern(theirs), ours) for theirs, ours in RENAMES.items()]
BACKWARD = [(_pattern(ours), theirs) for theirs, ours in RENAMES.items()]


def _rename(name: str, table: list) -> str | None:
    for pattern, target in table:
        m = pattern.match(name)
        if m:
            return target.format(i=m.groupdict().get("i")) + "." + m["kind"]
    return None


def config_from_hf(hf: dict, labels: list[str]) -> DETRConfig:
    unknown = sorted(set(hf) - INERT - set(MAPPED))
    if unknown:
        raise ConfigError(f"DETR config fields qkv does not know how to honour: {', '.join(unknown)}")
    backbone = hf.get("backbone_config") or {}
    if hf.get("use_timm_backbone", True) or backbone.get("model_type") != "resnet":
        kind = hf.get("backbone") or backbone.get("model_type")
        raise ConfigError(f"qkv's DETR converts checkpoints with a transformers ResNet backbone (use_timm_backbone="
                          f"false, backbone_config of model_type resnet); this one has {kind!r}")
    if hf.get("dilation") or hf.get("position_embedding_type", "sine") != "sine":
        raise ConfigError("qkv's DETR has sine positions and no dilated (DC5) stage; this config has "
                          f"position_embedding_type={hf.get('position_embedding_type')!r}, "
                          f"dilation={hf.get('dilation')}")
    stages = len(backbone.get("depths", [])) or 4
    last = (backbone.get("out_features") or [f"stage{stages}"])[-1]
    if last != f"stage{stages}" or backbone.get("num_channels", 3) != hf.get("num_channels", 3):
        raise ConfigError(f"the backbone must give its last stage (stage{stages}) and take the image's channels; "
                          f"this one gives {last} and takes {backbone.get('num_channels')} channels")
    if hf.get("auxiliary_loss"):
        warnings.warn("this DETR config has auxiliary_loss=true, with which transformers feeds each decoder layer "
                      "its LayerNorm'd input: its outputs differ from qkv's (and the paper's), which match "
                      "transformers' with auxiliary_loss=false", stacklevel=3)
    values = {k: hf[k] for k in MAPPED if k in hf}
    try:
        return DETRConfig(**values, backbone={k: backbone[k] for k in BACKBONE_FIELDS if k in backbone},
                          freeze_backbone_bn=True, num_labels=len(labels), class_names=labels)
    except ValueError as e:
        raise ConfigError(f"this DETR config has no qkv twin: {e}") from e


def state_dict_from_hf(sd: dict[str, Tensor], c: DETRConfig) -> dict[str, Tensor]:
    legacy = {}
    for name, t in sd.items():
        for pattern, repl in LEGACY:
            name = re.sub(pattern, repl, name)
        legacy[name] = t
    out = {}
    for ours, prefix, parts in _joins(c):
        for kind in ("weight", "bias"):
            names = [f"{prefix}{p}.{kind}" for p in parts]
            out[f"{ours}.{kind}"] = joined(legacy, names)
    for name, t in legacy.items():
        ours = BACKBONE_QKV + name[len(BACKBONE_HF):] if name.startswith(BACKBONE_HF) else _rename(name, FORWARD)
        if ours is None:
            raise ConfigError(f"checkpoint tensor {name} has no place in qkv's DETR")
        out[ours] = t
    for name in list(out):  # frozen batch norm keeps no count of the batches seen
        if name.startswith(BACKBONE_QKV) and name.endswith(".running_mean"):
            out.setdefault(name[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0))
    return out


def state_dict_to_hf(model: DETR) -> dict[str, Tensor]:
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    out = {}
    for ours, prefix, parts in _joins(model.config):
        for kind in ("weight", "bias"):
            for part, chunk in zip(parts, sd.pop(f"{ours}.{kind}").chunk(len(parts))):
                out[f"{prefix}{part}.{kind}"] = chunk
    for name, t in sd.items():
        theirs = BACKBONE_HF + name[len(BACKBONE_QKV):] if name.startswith(BACKBONE_QKV) else _rename(name, BACKWARD)
        if theirs is None:
            raise ConfigError(f"no Hugging Face name for {name}")
        out[theirs] = t
    return out


def _number(x: float):
    return int(x) if float(x).is_integer() else x  # transformers' DetrConfig types its costs as int


def config_to_hf(c: DETRConfig, eos_token_id: int | None = None) -> dict:
    b = c.backbone_config()
    if b.stem != "7x7":
        raise ConfigError(f"Hugging Face's ResNet has only the 7x7 stem with max-pool; a DETR whose backbone has "
                          f"stem={b.stem!r} has no twin to save as")
    n = len(b.depths)
    backbone = {"model_type": "resnet", "num_channels": c.num_channels, **{k: getattr(b, k) for k in resnet.MAPPED
                if k != "num_channels"}, "out_features": [f"stage{n}"], "out_indices": [n]}
    values = {k: getattr(c, k) for k in MAPPED}
    values.update({k: _number(values[k]) for k in ("class_cost", "bbox_cost", "giou_cost", "bbox_loss_coefficient",
                                                   "giou_loss_coefficient")})
    return {"architectures": ["DetrForObjectDetection"], "model_type": MODEL_TYPE, **values,
            "attention_dropout": c.dropout, "activation_dropout": 0.0, "auxiliary_loss": False,
            "position_embedding_type": "sine", "dilation": False, "use_timm_backbone": False,
            "use_pretrained_backbone": False, "backbone_config": backbone, **labels_to_hf(c.label_names)}


def from_hf(hf_config: dict, state_dict: dict[str, Tensor]) -> DETR:
    archs = hf_config.get("architectures") or ["DetrForObjectDetection"]
    if "DetrForObjectDetection" not in archs:
        raise ConfigError(f"qkv loads DetrForObjectDetection checkpoints (the heads included), not {archs}")
    config = config_from_hf(hf_config, labels_from_hf(hf_config))
    model = DETR(config)
    model.load_state_dict(state_dict_from_hf(state_dict, config), strict=True)
    return model


read_preprocessor = resnet.read_preprocessor  # normalisation; image size from size.shortest_edge


def write_preprocessor(model, directory: Path, processor: str = "DetrImageProcessor") -> None:
    """preprocessor_config.json of a DETR-family model (``processor`` names the image processor)."""
    c = model.config
    mean, std = c.mean_std
    p = {"image_processor_type": processor, "format": "coco_detection", "do_resize": True,
         "size": {"shortest_edge": c.image_size, "longest_edge": round(c.image_size * 1333 / 800)}, "resample": 2,
         "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": mean, "image_std": std,
         "do_convert_annotations": True, "do_pad": True}
    atomic_write_text(Path(directory) / vit.PREPROCESSOR, json.dumps(p, indent=2) + "\n")
