"""Weight conversion to and from Hugging Face model directories.

``from_hf(path)`` reads config.json and the weights and returns the matching qkv model;
``save_hf(model, path)`` writes a directory ``transformers`` loads with ``from_pretrained``.
Each model's conversion is a table of renames and transposes in its own file.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from . import bert, deformable_detr, detr, gpt2, hf, imagegpt, marian, resnet, swin, vit

# Hugging Face model_type -> converter
FROM_HF = {gpt2.MODEL_TYPE: gpt2, bert.MODEL_TYPE: bert, marian.MODEL_TYPE: marian, vit.MODEL_TYPE: vit,
           swin.MODEL_TYPE: swin, resnet.MODEL_TYPE: resnet, imagegpt.MODEL_TYPE: imagegpt,
           detr.MODEL_TYPE: detr, deformable_detr.MODEL_TYPE: deformable_detr}
TO_HF = {"gpt": gpt2, "bert": bert, "transformer": marian, "vit": vit, "swin": swin,  # qkv model_type -> converter
         "resnet": resnet, "igpt": imagegpt, "detr": detr,
         "deformable_detr": deformable_detr}


def is_hf_config(config: dict) -> bool:
    """A Hugging Face config.json, not qkv's own. qkv's BERT, ViT, Swin and ResNet share Hugging Face's
    model_type names; qkv's config.json holds only model_type and its config class's
    fields, while Hugging Face's carries transformers_version, architectures and more."""
    from dataclasses import fields

    from ..models import MODELS

    if config.get("model_type") not in FROM_HF:
        return False
    if {"architectures", "transformers_version"} & set(config):
        return True
    ours = MODELS.get(config["model_type"])
    return ours is None or not set(config) - {"model_type"} <= {f.name for f in fields(ours.config_class)}


def from_hf(path: str | Path, device: str = "cpu"):
    """Load a Hugging Face model directory as the matching qkv model (eval mode)."""
    path = Path(path)
    config = hf.read_config(path)
    converter = FROM_HF.get(config.get("model_type"))
    if converter is None:
        raise ConfigError(f"{path}: model_type {config.get('model_type')!r} has no qkv twin; "
                          f"qkv converts {', '.join(sorted(FROM_HF))}")
    model = converter.from_hf(config, hf.read_state_dict(path))
    if hasattr(converter, "read_preprocessor"):  # image models: normalisation from preprocessor_config.json
        converter.read_preprocessor(model, path)
    return model.to(device).eval()


def save_hf(model, path: str | Path, tokenizer=None) -> None:
    """Write ``model`` as a Hugging Face directory (and ``tokenizer.json`` if given)."""
    converter = TO_HF.get(model.model_type)
    if converter is None:
        raise ConfigError(f"{type(model).__name__} has no Hugging Face twin to save as")
    eos = getattr(tokenizer, "eos_token_id", None)
    hf.write(Path(path), converter.config_to_hf(model.config, eos), converter.state_dict_to_hf(model))
    if hasattr(converter, "write_preprocessor"):
        converter.write_preprocessor(model, Path(path))
    if tokenizer is not None:
        tokenizer.save(path)
