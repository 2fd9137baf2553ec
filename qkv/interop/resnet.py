"""Hugging Face ResNet (``ResNetForImageClassification``, ``ResNetModel``) <-> qkv's ResNet.

qkv's ResNet uses Hugging Face's module names, so the table is nearly the identity: the
classifier checkpoints prefix the network with ``resnet.`` and keep the head in a
``Sequential(Flatten, Linear)`` (``classifier.1``). Batch-norm running statistics are
buffers and travel with the weights. Hugging Face has only the 7x7 stem (``stem="7x7"``)
and no dropout; the normalisation and the image size live in ``preprocessor_config.json``.
"""
from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..errors import ConfigError
from ..files import read_json
from ..models.resnet import ResNet, ResNetConfig
from ..nn import ACTIVATIONS
from . import vit
from .hf import GENERIC_CONFIG_KEYS, labels_from_hf, labels_to_hf

MODEL_TYPE = "resnet"
PREFIX, HEAD = "resnet.", "classifier.1."   # Hugging Face's; qkv's head is "classifier."
MAPPED = ("num_channels", "embedding_size", "hidden_sizes", "depths", "layer_type", "hidden_act",
          "downsample_in_first_stage", "downsample_in_bottleneck")
# num_labels: from id2label; the rest: ResNetBackbone's choice of outputs, no part of the network
INERT = GENERIC_CONFIG_KEYS | {"num_labels", "out_features", "out_indices", "stage_names", "_out_features",
                               "_out_indices"}


def config_from_hf(hf: dict, has_head: bool) -> ResNetConfig:
    unknown = sorted(set(hf) - INERT - set(MAPPED))
    if unknown:
        raise ConfigError(f"ResNet config fields qkv does not know how to honour: {', '.join(unknown)}")
    if hf.get("hidden_act", "relu") not in ACTIVATIONS:
        raise ConfigError(f"hidden_act={hf['hidden_act']!r} is not one of {sorted(ACTIVATIONS)}")
    labels = labels_from_hf(hf) if has_head else []
    values = {k: (list(hf[k]) if isinstance(hf[k], (list, tuple)) else hf[k]) for k in MAPPED if k in hf}
    try:
        return ResNetConfig(**values, stem="7x7", num_labels=len(labels), class_names=labels)
    except ValueError as e:
        raise ConfigError(f"this ResNet config has no qkv twin: {e}") from e


def state_dict_from_hf(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for name, t in sd.items():
        name = name[len(PREFIX):] if name.startswith(PREFIX) else name
        if name.startswith(HEAD):
            name = "classifier." + name[len(HEAD):]
        elif not name.startswith(("embedder.", "encoder.")):
            raise ConfigError(f"checkpoint tensor {name} has no place in qkv's ResNet")
        out[name] = t
    return out


def state_dict_to_hf(model: ResNet) -> dict[str, Tensor]:
    prefix = PREFIX if model.config.num_labels > 0 else ""
    return {(HEAD + name[len("classifier."):] if name.startswith("classifier.") else prefix + name): t
            for name, t in model.state_dict().items()}


def config_to_hf(c: ResNetConfig, eos_token_id: int | None = None) -> dict:
    if c.stem != "7x7":
        raise ConfigError(f"Hugging Face's ResNet has only the 7x7 stem with max-pool; a stem={c.stem!r} model "
                          "(e.g. resnet-28-small) has no twin to save as")
    arch = "ResNetForImageClassification" if c.num_labels > 0 else "ResNetModel"
    return {"architectures": [arch], "model_type": MODEL_TYPE, **{k: getattr(c, k) for k in MAPPED},
            **labels_to_hf(c.label_names)}


def from_hf(hf_config: dict, state_dict: dict[str, Tensor]) -> ResNet:
    archs = hf_config.get("architectures") or ["ResNetModel"]
    if not set(archs) & {"ResNetForImageClassification", "ResNetModel"}:
        raise ConfigError(f"qkv loads ResNetForImageClassification and ResNetModel checkpoints, not {archs}")
    has_head = any(k.startswith(HEAD) for k in state_dict)
    model = ResNet(config_from_hf(hf_config, has_head))
    model.load_state_dict(state_dict_from_hf(state_dict), strict=True)
    return model


def read_preprocessor(model: ResNet, directory: Path) -> None:
    """Normalisation, and the image size (``crop_size``, else ``size``), from preprocessor_config.json."""
    vit.read_preprocessor(model, directory)
    file = Path(directory) / vit.PREPROCESSOR
    if file.is_file():
        p = read_json(file)
        for key, flag in (("crop_size", "do_center_crop"), ("size", "do_resize")):
            size = p.get(key) if p.get(flag, True) else None
            side = size.get("height", size.get("shortest_edge")) if isinstance(size, dict) else size
            if isinstance(side, int) and side > 0:
                model.config.image_size = side
                break


write_preprocessor = vit.write_preprocessor  # resize to image_size, rescale, normalise
