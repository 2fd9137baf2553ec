"""Weight conversion to and from Hugging Face model directories.

``from_hf(path)`` reads config.json and the weights and returns the matching qkv model;
``save_hf(model, path)`` writes a directory ``transformers`` loads with ``from_pretrained``.
Each model's conversion is a table of renames and transposes in its own file.
"""
from __future__ import annotations

from pathlib import Path

from ..config import ConfigError
from . import gpt2, hf, marian, vit

# Hugging Face model_type -> converter
FROM_HF = {gpt2.MODEL_TYPE: gpt2, marian.MODEL_TYPE: marian, vit.MODEL_TYPE: vit}
TO_HF = {"gpt": gpt2, "transformer": marian, "vit": vit}  # qkv model_type -> converter


def is_hf_config(config: dict) -> bool:
    if config.get("model_type") in TO_HF and not {"architectures", "transformers_version"} & set(config):
        return False  # qkv's own config.json ("vit" is both a qkv and a Hugging Face model_type)
    return config.get("model_type") in FROM_HF


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
