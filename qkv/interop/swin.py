"""Hugging Face Swin (``SwinForImageClassification``, ``SwinModel``) <-> ``qkv.Swin``.

A table of renames, plus one join: Hugging Face keeps separate query/key/value
projections, qkv's attention one fused ``c_attn`` (rows: Q, then K, then V). Checkpoints
of ``SwinForImageClassification`` prefix the encoder with ``swin.``; ``SwinModel`` ones do
not (its pooler, an average, has no weights). Names are those ``save_pretrained`` writes
(``attention.self.query``, ...); the names of transformers 5's modules (``attention.q_proj``,
...) are read too. ``relative_position_index`` buffers of old checkpoints are recomputed,
not read. The image normalisation lives in ``preprocessor_config.json``, as for ViT.
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

from ..errors import ConfigError
from ..models.swin import Swin, SwinConfig
from ..nn import ACTIVATIONS
from .hf import GENERIC_CONFIG_KEYS, joined, labels_from_hf, labels_to_hf
from .vit import read_preprocessor, write_preprocessor  # noqa: F401 (the preprocessor is ViT's)

MODEL_TYPE = "swin"
# derived (hidden_size, num_layers, stage_names), the backbone's outputs, the masked-image decoder's stride
INERT = GENERIC_CONFIG_KEYS | {"num_labels", "hidden_size", "num_layers", "stage_names", "out_features",
                               "out_indices", "_out_features", "_out_indices", "encoder_stride"}
MAPPED = ("image_size", "patch_size", "num_channels", "embed_dim", "depths", "num_heads", "window_size",
          "mlp_ratio", "hidden_act", "layer_norm_eps", "qkv_bias", "drop_path_rate")
OTHER = {"hidden_dropout_prob", "attention_probs_dropout_prob", "use_absolute_embeddings"}
BLOCK = "encoder.layers.{s}.blocks.{i}"
# Hugging Face name (after the swin. prefix) -> qkv name; {s} is the stage, {i} the block.
RENAMES = {
    "embeddings.patch_embeddings.projection": "embeddings.projection",
    "embeddings.norm": "embeddings.norm",
    BLOCK + ".layernorm_before": "layers.{s}.blocks.{i}.ln_1",
    BLOCK + ".attention.self.relative_position_bias_table": "layers.{s}.blocks.{i}.relative_position_bias_table",
    BLOCK + ".attention.output.dense": "layers.{s}.blocks.{i}.attn.c_proj",
    BLOCK + ".layernorm_after": "layers.{s}.blocks.{i}.ln_2",
    BLOCK + ".intermediate.dense": "layers.{s}.blocks.{i}.mlp.c_fc",
    BLOCK + ".output.dense": "layers.{s}.blocks.{i}.mlp.c_proj",
    "encoder.layers.{s}.downsample.norm": "layers.{s}.downsample.norm",
    "encoder.layers.{s}.downsample.reduction": "layers.{s}.downsample.reduction",
    "layernorm": "layernorm",
}
QKV = BLOCK + ".attention.self.{part}"
PARTS = ("query", "key", "value")
MODULE_NAMES = [  # transformers 5's module names -> the names on disk
    (re.compile(r"\.attention\.relative_position_bias\.relative_position_bias_table$"),
     ".attention.self.relative_position_bias_table"),
    (re.compile(r"\.attention\.q_proj\."), ".attention.self.query."),
    (re.compile(r"\.attention\.k_proj\."), ".attention.self.key."),
    (re.compile(r"\.attention\.v_proj\."), ".attention.self.value."),
    (re.compile(r"\.attention\.o_proj\."), ".attention.output.dense."),
    (re.compile(r"\.mlp\.fc1\."), ".intermediate.dense."),
    (re.compile(r"\.mlp\.fc2\."), ".output.dense."),
]


def _pattern(template: str) -> re.Pattern:
    """``template`` with {s} (stage), {i} (block), {part} as groups, then an optional .weight/.bias."""
    p = re.escape(template)
    for key, group in (("s", r"\d+"), ("i", r"\d+"), ("part", "query|key|value")):
        p = p.replace(re.escape("{%s}" % key), f"(?P<{key}>{group})")
    return re.compile(p + r"(?P<kind>\.weight|\.bias)?$")


def _rename(name: str, table: list) -> str | None:
    for pattern, target in table:
        m = pattern.match(name)
        if m:
            return target.format(**m.groupdict()) + (m["kind"] or "")
    return None


FORWARD = [(_pattern(theirs), ours) for theirs, ours in RENAMES.items()]
BACKWARD = [(_pattern(ours), theirs) for theirs, ours in RENAMES.items()]
QKV_NAME = _pattern(QKV)


def config_from_hf(hf: dict, has_head: bool) -> SwinConfig:
    unknown = sorted(set(hf) - INERT - set(MAPPED) - OTHER)
    if unknown:
        raise ConfigError(f"Swin config fields qkv does not know how to honour: {', '.join(unknown)}")
    if hf.get("use_absolute_embeddings", False):
        raise ConfigError("qkv's Swin has no absolute position embeddings (use_absolute_embeddings=true)")
    for key in ("image_size", "patch_size"):
        if isinstance(hf.get(key), list):
            if len(set(hf[key])) != 1:
                raise ConfigError(f"{key}={hf[key]}: qkv's Swin takes square images and patches")
            hf = {**hf, key: hf[key][0]}
    drops = {hf.get("hidden_dropout_prob", 0.0), hf.get("attention_probs_dropout_prob", 0.0)}
    if len(drops) > 1:
        raise ConfigError("qkv's Swin has one dropout rate; this config has hidden_dropout_prob="
                          f"{hf.get('hidden_dropout_prob')} and attention_probs_dropout_prob="
                          f"{hf.get('attention_probs_dropout_prob')}")
    if hf.get("hidden_act", "gelu") not in ACTIVATIONS:
        raise ConfigError(f"hidden_act={hf['hidden_act']!r} is not one of {sorted(ACTIVATIONS)}")
    labels = labels_from_hf(hf) if has_head else []
    values = {"drop_path_rate": 0.1, **{k: hf[k] for k in MAPPED if k in hf}}  # 0.1: HF's default
    return SwinConfig(**values, dropout=drops.pop(), num_labels=len(labels), class_names=labels)


def state_dict_from_hf(sd: dict[str, Tensor], c: SwinConfig) -> dict[str, Tensor]:
    out = {}
    for name, t in sd.items():
        name = name[5:] if name.startswith("swin.") else name
        for pattern, repl in MODULE_NAMES:
            name = pattern.sub(repl, name)
        if name.endswith("relative_position_index"):
            continue
        ours = name if name.startswith("classifier.") else _rename(name, FORWARD)
        if ours is None and not QKV_NAME.match(name):
            raise ConfigError(f"checkpoint tensor {name} has no place in qkv's Swin")
        out[ours or name] = t
    for s, depth in enumerate(c.depths):
        for i in range(depth):
            for kind in ("weight", "bias"):
                names = [f"{QKV.format(s=s, i=i, part=p)}.{kind}" for p in PARTS]
                if kind == "bias" and not c.qkv_bias:
                    out[f"layers.{s}.blocks.{i}.attn.c_attn.bias"] = torch.zeros(3 * (c.embed_dim << s))
                    continue
                out[f"layers.{s}.blocks.{i}.attn.c_attn.{kind}"] = joined(out, names)
    return out


def state_dict_to_hf(model: Swin) -> dict[str, Tensor]:
    c, prefix = model.config, "swin." if model.config.num_labels > 0 else ""
    out = {}
    for name, t in model.state_dict().items():
        if name.startswith("classifier."):
            out[name] = t
            continue
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.attn\.c_attn\.(weight|bias)$", name)
        if m:
            if m.group(3) == "bias" and not c.qkv_bias:
                if t.any():
                    raise ConfigError(f"qkv_bias=false, but {name} is not zero: Hugging Face's Swin would drop it")
                continue
            for part, chunk in zip(PARTS, t.chunk(3)):
                out[f"{prefix}{QKV.format(s=m.group(1), i=m.group(2), part=part)}.{m.group(3)}"] = chunk
            continue
        theirs = _rename(name, BACKWARD)
        if theirs is None:
            raise ConfigError(f"no Hugging Face name for {name}")
        out[prefix + theirs] = t
    return out


def config_to_hf(c: SwinConfig, eos_token_id: int | None = None) -> dict:
    arch = "SwinForImageClassification" if c.num_labels > 0 else "SwinModel"
    return {"architectures": [arch], "model_type": MODEL_TYPE, **{k: getattr(c, k) for k in MAPPED},
            "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.dropout,
            "use_absolute_embeddings": False,
            **labels_to_hf(c.label_names)}


def from_hf(hf_config: dict, state_dict: dict[str, Tensor]) -> Swin:
    archs = hf_config.get("architectures") or ["SwinModel"]
    if not set(archs) & {"SwinForImageClassification", "SwinModel"}:
        raise ConfigError(f"qkv loads SwinForImageClassification and SwinModel checkpoints, not {archs}")
    config = config_from_hf(hf_config, any(k.startswith("classifier.") for k in state_dict))
    model = Swin(config)
    model.load_state_dict(state_dict_from_hf(state_dict, config), strict=True)
    return model
