"""Hugging Face ViT (``ViTForImageClassification``, ``ViTModel``) <-> ``qkv.ViT``.

A table of renames, plus one join: Hugging Face keeps separate query/key/value
projections, qkv's attention one fused ``c_attn`` (rows: Q, then K, then V). Checkpoints
of ``ViTForImageClassification`` prefix the encoder with ``vit.``; ``ViTModel`` ones do
not and may carry the pooler (dense + tanh on [CLS]). The image normalisation lives in
Hugging Face's ``preprocessor_config.json``; it is read into (and written from) the config.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError
from ..files import atomic_write_text, read_json
from ..models.vit import ViT, ViTConfig
from ..nn import ACTIVATIONS
from .hf import GENERIC_CONFIG_KEYS, joined, labels_from_hf, labels_to_hf

MODEL_TYPE = "vit"
PREPROCESSOR = "preprocessor_config.json"
INERT = GENERIC_CONFIG_KEYS | {"encoder_stride", "num_labels"}  # encoder_stride: masked-image decoder
MAPPED = ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
          "num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps", "qkv_bias")
OTHER = {"hidden_dropout_prob", "attention_probs_dropout_prob", "pooler_act", "pooler_output_size"}
# Hugging Face name (after the vit. prefix) -> qkv name; {i} is the layer.
RENAMES = {
    "embeddings.cls_token": "embeddings.cls_token",
    "embeddings.position_embeddings": "embeddings.position_embeddings",
    "embeddings.patch_embeddings.projection": "embeddings.projection",
    "encoder.layer.{i}.layernorm_before": "layers.{i}.ln_1",
    "encoder.layer.{i}.attention.output.dense": "layers.{i}.attn.c_proj",
    "encoder.layer.{i}.layernorm_after": "layers.{i}.ln_2",
    "encoder.layer.{i}.intermediate.dense": "layers.{i}.mlp.c_fc",
    "encoder.layer.{i}.output.dense": "layers.{i}.mlp.c_proj",
    "layernorm": "layernorm",
    "pooler.dense": "pooler",
}
QKV = "encoder.layer.{i}.attention.attention.{part}"
PARTS = ("query", "key", "value")


def _pattern(template: str) -> re.Pattern:
    """``template`` with {i} as a layer number, then an optional .weight/.bias."""
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)") + r"(?P<kind>\.weight|\.bias)?$")


def _rename(name: str, table: list) -> str | None:
    for pattern, target in table:
        m = pattern.match(name)
        if m:
            return target.format(i=m.groupdict().get("i")) + (m["kind"] or "")
    return None


FORWARD = [(_pattern(theirs), ours) for theirs, ours in RENAMES.items()]
BACKWARD = [(_pattern(ours), theirs) for theirs, ours in RENAMES.items()]


def config_from_hf(hf: dict, has_head: bool, has_pooler: bool) -> ViTConfig:
    unknown = sorted(set(hf) - INERT - set(MAPPED) - OTHER)
    if unknown:
        raise ConfigError(f"ViT config fields qkv does not know how to honour: {', '.join(unknown)}")
    for key in ("image_size", "patch_size"):
        if isinstance(hf.get(key), list):
            if len(set(hf[key])) != 1:
                raise ConfigError(f"{key}={hf[key]}: qkv's ViT takes square images and patches")
            hf = {**hf, key: hf[key][0]}
    drops = {hf.get("hidden_dropout_prob", 0.0), hf.get("attention_probs_dropout_prob", 0.0)}
    if len(drops) > 1:
        raise ConfigError("qkv's ViT has one dropout rate; this config has hidden_dropout_prob="
                          f"{hf.get('hidden_dropout_prob')} and attention_probs_dropout_prob="
                          f"{hf.get('attention_probs_dropout_prob')}")
    if hf.get("hidden_act", "gelu") not in ACTIVATIONS:
        raise ConfigError(f"hidden_act={hf['hidden_act']!r} is not one of {sorted(ACTIVATIONS)}")
    if has_pooler and (hf.get("pooler_act", "tanh") != "tanh"
                       or hf.get("pooler_output_size", hf.get("hidden_size")) != hf.get("hidden_size")):
        raise ConfigError("qkv's ViT pooler is tanh(dense) of width hidden_size; this config has "
                          f"pooler_act={hf.get('pooler_act')!r}, pooler_output_size={hf.get('pooler_output_size')}")
    labels = labels_from_hf(hf) if has_head else []
    values = {"layer_norm_eps": 1e-12, **{k: hf[k] for k in MAPPED if k in hf}}  # 1e-12: HF's default
    return ViTConfig(**values, dropout=drops.pop(), num_labels=len(labels), class_names=labels, pooler=has_pooler)


def state_dict_from_hf(sd: dict[str, Tensor], c: ViTConfig) -> dict[str, Tensor]:
    sd = {(k[4:] if k.startswith("vit.") else k): v for k, v in sd.items()}
    out = {k: v for k, v in sd.items() if k.startswith("classifier.")}
    qkv_names = re.compile(r"encoder\.layer\.\d+\.attention\.attention\.(query|key|value)\.(weight|bias)$")
    for name, t in sd.items():
        ours = _rename(name, FORWARD)
        if ours is not None:
            out[ours] = t
        elif not name.startswith("classifier.") and not qkv_names.match(name):
            raise ConfigError(f"checkpoint tensor {name} has no place in qkv's ViT")
    for i in range(c.num_hidden_layers):
        for kind in ("weight", "bias"):
            names = [f"{QKV.format(i=i, part=p)}.{kind}" for p in PARTS]
            if kind == "bias" and not c.qkv_bias:
                out[f"layers.{i}.attn.c_attn.bias"] = torch.zeros(3 * c.hidden_size)
                continue
            out[f"layers.{i}.attn.c_attn.{kind}"] = joined(sd, names)
    return out


def state_dict_to_hf(model: ViT) -> dict[str, Tensor]:
    c, prefix = model.config, "vit." if model.config.num_labels > 0 else ""
    out = {}
    for name, t in model.state_dict().items():
        if name.startswith("classifier."):
            out[name] = t
            continue
        m = re.match(r"layers\.(\d+)\.attn\.c_attn\.(weight|bias)$", name)
        if m:
            if m.group(2) == "bias" and not c.qkv_bias:
                if t.any():
                    raise ConfigError(f"qkv_bias=false, but {name} is not zero: Hugging Face's ViT would drop it")
                continue
            for part, chunk in zip(PARTS, t.chunk(3)):
                out[f"{prefix}{QKV.format(i=m.group(1), part=part)}.{m.group(2)}"] = chunk
            continue
        theirs = _rename(name, BACKWARD)
        if theirs is None:
            raise ConfigError(f"no Hugging Face name for {name}")
        out[prefix + theirs] = t
    return out


def config_to_hf(c: ViTConfig, eos_token_id: int | None = None) -> dict:
    if c.pool != "cls":
        raise ConfigError("Hugging Face's ViT classifies from [CLS]; a pool=\"mean\" model has no twin")
    if c.num_labels > 0 and c.pooler:
        raise ConfigError("ViTForImageClassification has no pooler; set pooler=false or num_labels=0")
    arch = "ViTForImageClassification" if c.num_labels > 0 else "ViTModel"
    return {"architectures": [arch], "model_type": MODEL_TYPE, **{k: getattr(c, k) for k in MAPPED},
            "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.dropout,
            **labels_to_hf(c.label_names)}


def from_hf(hf_config: dict, state_dict: dict[str, Tensor]) -> ViT:
    archs = hf_config.get("architectures") or ["ViTModel"]
    if not set(archs) & {"ViTForImageClassification", "ViTModel"}:
        raise ConfigError(f"qkv loads ViTForImageClassification and ViTModel checkpoints, not {archs}")
    has_head = any(k.startswith("classifier.") for k in state_dict)
    has_pooler = any(k.startswith(("pooler.", "vit.pooler.")) for k in state_dict)
    config = config_from_hf(hf_config, has_head, has_pooler and not has_head)
    model = ViT(config)
    model.load_state_dict(state_dict_from_hf(state_dict, config), strict=True)
    return model


def read_preprocessor(model: ViT, directory: Path) -> None:
    """Take the normalisation from ``preprocessor_config.json`` when the directory has one."""
    file = Path(directory) / PREPROCESSOR
    if file.is_file():
        p = read_json(file)
        n = model.config.num_channels
        if p.get("do_normalize", True) and "image_mean" in p:
            model.config.image_mean = [float(x) for x in p["image_mean"]][:n]
            model.config.image_std = [float(x) for x in p["image_std"]][:n]


def write_preprocessor(model: ViT, directory: Path) -> None:
    c = model.config
    mean, std = c.mean_std
    p = {"image_processor_type": "ViTImageProcessor", "do_resize": True,
         "size": {"height": c.image_size, "width": c.image_size}, "resample": 2,
         "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
         "image_mean": mean, "image_std": std}
    atomic_write_text(Path(directory) / PREPROCESSOR, json.dumps(p, indent=2) + "\n")
