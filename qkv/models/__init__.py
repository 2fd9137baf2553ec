"""Every model qkv has, in one registry.

A model is a config dataclass plus an ``nn.Module``. Each model class declares, in its
own file, the three things the registry needs:

- ``model_type``: its kind, as written in ``config.json`` ("gpt", "vit", ...);
- ``role``: what it does, which is what a task asks for ("causal_lm", "masked_lm",
  "seq2seq", "image_classifier"); a task takes any registered model of its role;
- ``presets``: named configurations (``{"vit-s-16": {...}}``), unique across models.

``build("vit-28-small", num_labels=5)`` or ``build("gpt", n_layer=2)`` makes a model from a
kind or a preset name and any config fields.
"""
from __future__ import annotations

from typing import Any

from ..config import from_dict, merged
from ..errors import ConfigError
from .baselines import LSTMSeq2Seq, LSTMSeq2SeqConfig
from .bert import BERT, BERTConfig
from .deformable_detr import DeformableDETR, DeformableDETRConfig
from .detr import DETR, DETRConfig
from .gpt import GPT, GPTConfig
from .igpt import ImageGPT, ImageGPTConfig
from .resnet import ResNet, ResNetConfig
from .swin import Swin, SwinConfig
from .transformer import Transformer, TransformerConfig
from .vit import ViT, ViTConfig

MODELS: dict[str, type] = {}     # model_type -> model class (its config class is cls.config_class)
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {}  # preset name -> (model_type, config fields)


def register(cls: type) -> type:
    """Add a model class (and its presets) to the registry."""
    for attr in ("model_type", "role", "config_class"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__name__} must declare {attr} to be registered")
    presets = getattr(cls, "presets", {})
    taken = [name for name in (cls.model_type, *presets) if name in MODELS or name in PRESETS]
    if taken:  # checked before the registry changes, so that a refused class leaves no trace
        raise TypeError(f"model_type or preset name {', '.join(map(repr, taken))} of {cls.__name__} "
                        "is already taken")
    MODELS[cls.model_type] = cls
    PRESETS.update((name, (cls.model_type, values)) for name, values in presets.items())
    return cls


for _cls in (GPT, BERT, Transformer, LSTMSeq2Seq, ViT, Swin, ResNet, ImageGPT, DETR, DeformableDETR):
    register(_cls)


def kinds(role: str | None = None) -> list[str]:
    """Registered model types (of one role)."""
    return sorted(k for k, cls in MODELS.items() if role is None or cls.role == role)


def resolve(name: str) -> tuple[str, dict[str, Any]]:
    """A kind or a preset name -> (model_type, the preset's fields)."""
    if name in MODELS:
        return name, {}
    if name in PRESETS:
        kind, values = PRESETS[name]
        return kind, dict(values)
    raise ConfigError(f"unknown model {name!r}; qkv has the kinds {', '.join(kinds())} and the presets "
                      f"{', '.join(sorted(PRESETS))}")


def build(kind_or_preset: str, **overrides):
    """A freshly initialised model of a kind or preset, with ``overrides`` on its config
    (a table such as DETR's ``backbone`` is merged into the preset's, key by key)."""
    kind, values = resolve(kind_or_preset)
    cls = MODELS[kind]
    return cls(from_dict(cls.config_class, merged(values, overrides), where="model"))


def from_config(config: dict[str, Any]):
    """The model a ``config.json`` describes (``model_type`` plus its config's fields)."""
    if not isinstance(config, dict):
        raise ConfigError(f"a model config must be a JSON object, got {type(config).__name__}")
    config = dict(config)
    kind = config.pop("model_type", None)
    if kind not in MODELS:
        raise ConfigError(f"unknown model_type {kind!r}; qkv knows {', '.join(kinds())}")
    return build(kind, **config)


def from_section(section: dict[str, Any], role: str, *, default: str, data: dict[str, Any] | None = None,
                 fixed: dict[str, Any] | None = None):
    """The model a run config's ``[model]`` describes, for a task that trains models of ``role``.

    ``[model]`` names a kind (``type = "vit"``) or a preset (``preset = "vit-28-small"``),
    else ``default`` is used, and sets any config field. ``data`` holds fields the task
    derives from its data (vocabulary size, image size, class names, ...): they replace
    the preset's, and ``[model]`` may override them; ``fixed`` holds fields the data
    dictates, which ``[model]`` may not contradict.
    """
    cfg, data, fixed = dict(section), dict(data or {}), dict(fixed or {})
    kind, preset = cfg.pop("type", None), cfg.pop("preset", None)
    name = preset or kind or default
    model_type, values = resolve(name)
    if kind is not None and kind != model_type:
        raise ConfigError(f"model.preset {preset!r} is a {model_type!r} model, but model.type is {kind!r}; "
                          "remove one of them")
    if MODELS[model_type].role != role:
        raise ConfigError(f"this task trains a model of role {role!r} ({', '.join(kinds(role))}), "
                          f"not {model_type!r} (a {MODELS[model_type].role}); set model.type to one of those")
    clash = {k: cfg[k] for k in fixed if k in cfg and cfg[k] != fixed[k]}
    if clash:
        raise ConfigError(f"[model] sets {', '.join(f'{k}={v!r}' for k, v in clash.items())}, but the data "
                          f"dictates {', '.join(f'{k}={fixed[k]!r}' for k in clash)}: remove those keys")
    return build(model_type, **merged(values, data, cfg, fixed))


__all__ = ["BERT", "BERTConfig", "DETR", "DETRConfig", "DeformableDETR", "DeformableDETRConfig", "GPT", "GPTConfig",
           "ImageGPT", "ImageGPTConfig", "LSTMSeq2Seq", "LSTMSeq2SeqConfig", "MODELS", "PRESETS", "ResNet",
           "ResNetConfig", "Swin", "SwinConfig", "Transformer", "TransformerConfig", "ViT", "ViTConfig", "build",
           "from_config", "from_section", "kinds", "register", "resolve"]
