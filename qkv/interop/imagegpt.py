"""Hugging Face ImageGPT (``ImageGPTForCausalImageModeling``, ``ImageGPTModel``) <->
``qkv.models.ImageGPT``.

ImageGPT is GPT-2 with an RMS-style LayerNorm (a weight, no bias), an untied head over
``vocab_size - 1`` outputs and QuickGELU: the parameter names are GPT-2's, and the same
four ``Conv1D`` matrices are transposed (``gpt2.TRANSPOSED``). ``ImageGPTModel`` is the
trunk alone, without the ``transformer.`` prefix; in qkv it is an ImageGPT with
``lm_head_size = 0``.

The palette lives in Hugging Face's image processor (``preprocessor_config.json``):
``clusters``, (k, 3) RGB colours in [-1, 1] (pixel / 127.5 - 1). qkv's image GPTs are grey:
grey level g is written as the colour (c, c, c), c = g / 127.5 - 1, which
``ImageGPTImageProcessor`` assigns to a grey image exactly as qkv does (the nearest of
(c, c, c) in RGB is the nearest c). ``resample`` is PIL's BOX filter, the area averaging qkv
reduces images with. Clusters read back as a palette when every colour is grey (R = G = B);
OpenAI's RGB checkpoints load with an empty palette (their logits are right; qkv's pixel
tools, which are grey, refuse them).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from torch import Tensor

from ..errors import ConfigError
from ..files import atomic_write_text, read_json
from ..models.igpt import ImageGPT, ImageGPTConfig
from ..nn import ACTIVATIONS
from .gpt2 import DROPOUTS, TRANSPOSED
from .hf import GENERIC_CONFIG_KEYS

MODEL_TYPE = "imagegpt"
PREPROCESSOR = "preprocessor_config.json"
ARCHITECTURES = ("ImageGPTForCausalImageModeling", "ImageGPTModel")
INERT = GENERIC_CONFIG_KEYS | {"reorder_and_upcast_attn"}  # an fp16 overflow guard; in fp32 the same attention
MAPPED = {
    "vocab_size": "vocab_size", "n_positions": "block_size", "n_layer": "n_layer", "n_head": "n_head",
    "n_embd": "n_embd", "n_inner": "n_inner", "activation_function": "activation",
    "layer_norm_epsilon": "layer_norm_eps", "scale_attn_weights": "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx": "scale_attn_by_inverse_layer_idx",
}
# transformers' ImageGPTConfig defaults (qkv's names), for fields a config.json leaves out
HF_DEFAULTS = {"vocab_size": 512 + 1, "block_size": 32 * 32, "n_layer": 24, "n_head": 8, "n_embd": 512,
               "activation": "quick_gelu", "layer_norm_eps": 1e-5}
BOX = 4  # PIL.Image.Resampling.BOX: each output pixel the mean of the input pixels it covers


def config_from_hf(hf: dict, has_head: bool) -> ImageGPTConfig:
    unknown = sorted(set(hf) - INERT - set(MAPPED) - set(DROPOUTS) - {"n_ctx", "add_cross_attention",
                                                                     "tie_word_embeddings"})
    if unknown:
        raise ConfigError(f"ImageGPT config fields qkv does not know how to honour: {', '.join(unknown)}")
    if hf.get("add_cross_attention"):
        raise ConfigError("add_cross_attention=true (ImageGPT with cross-attention) is not supported")
    if hf.get("tie_word_embeddings"):
        raise ConfigError("tie_word_embeddings=true: ImageGPT's head (vocab_size - 1 outputs) cannot share "
                          "the embedding's vocab_size rows; transformers itself does not tie it")
    if hf.get("n_ctx", hf.get("n_positions")) != hf.get("n_positions"):
        raise ConfigError(f"n_ctx={hf['n_ctx']} differs from n_positions={hf.get('n_positions')}")
    if hf.get("activation_function", "quick_gelu") not in ACTIVATIONS:
        raise ConfigError(f"activation_function={hf['activation_function']!r} is not one of {sorted(ACTIVATIONS)}")
    drops = {hf.get(k, 0.1) for k in DROPOUTS}
    if len(drops) > 1:
        raise ConfigError(f"qkv's GPT has one dropout rate; this config has "
                          f"{', '.join(f'{k}={hf.get(k, 0.1)}' for k in DROPOUTS)}")
    values = {**HF_DEFAULTS, **{ours: hf[theirs] for theirs, ours in MAPPED.items() if theirs in hf}}
    return ImageGPTConfig(**values, dropout=drops.pop(), bias=True, tie_word_embeddings=False, norm="rmsnorm",
                          lm_head_size=values["vocab_size"] - 1 if has_head else 0,
                          image_size=math.isqrt(values["block_size"]))


def config_to_hf(c: ImageGPTConfig, eos_token_id: int | None = None) -> dict:
    if not c.bias or c.norm != "rmsnorm" or c.tie_word_embeddings:
        raise ConfigError("ImageGPT has biases, an RMS LayerNorm and an untied head; this model "
                          f"(bias={c.bias}, norm={c.norm!r}, tie_word_embeddings={c.tie_word_embeddings}) has no twin")
    arch = ARCHITECTURES[0] if c.lm_head_size else ARCHITECTURES[1]
    hf = {theirs: getattr(c, ours) for theirs, ours in MAPPED.items()}
    return {"architectures": [arch], "model_type": MODEL_TYPE, **hf, **{k: c.dropout for k in DROPOUTS},
            "tie_word_embeddings": False, "bos_token_id": c.start_token}


def state_dict_from_hf(sd: dict[str, Tensor], model: ImageGPT) -> dict[str, Tensor]:
    out = {}
    for name, t in sd.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")) and t.dim() != 1:
            continue  # the causal-mask buffers some checkpoints carry
        name = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
        out[name] = t.t() if name.endswith(TRANSPOSED) else t
    wanted = model.state_dict()
    missing, unexpected = sorted(set(wanted) - set(out)), sorted(set(out) - set(wanted))
    if missing or unexpected:
        raise ConfigError(f"the checkpoint does not match its ImageGPT config: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    return out


def state_dict_to_hf(model: ImageGPT) -> dict[str, Tensor]:
    sd = {n: (t.t() if n.endswith(TRANSPOSED) else t) for n, t in model.state_dict().items()}
    if not model.config.lm_head_size:  # ImageGPTModel: the trunk, unprefixed
        sd = {n.removeprefix("transformer."): t for n, t in sd.items()}
    return sd


def from_hf(hf_config: dict, state_dict: dict[str, Tensor]) -> ImageGPT:
    archs = hf_config.get("architectures") or ["ImageGPTModel"]
    if not set(archs) & set(ARCHITECTURES):
        raise ConfigError(f"qkv loads {' and '.join(ARCHITECTURES)} checkpoints, not {archs}")
    model = ImageGPT(config_from_hf(hf_config, has_head="lm_head.weight" in state_dict))
    model.load_state_dict(state_dict_from_hf(state_dict, model), strict=True)
    return model


def read_preprocessor(model: ImageGPT, directory: Path) -> None:
    """The image size and, for grey clusters, the palette from ``preprocessor_config.json``."""
    file = Path(directory) / PREPROCESSOR
    if not file.is_file():
        return
    p, c = read_json(file), model.config
    size = p.get("size") or {}
    side = size.get("height") if isinstance(size, dict) else None
    if side is not None and side == size.get("width") and side ** 2 <= c.block_size:
        c.image_size = side
    clusters = p.get("clusters") or []
    if len(clusters) == c.vocab_size - 1 and all(len(rgb) == 3 and max(rgb) - min(rgb) < 1e-6 for rgb in clusters):
        c.palette = [round(min(max((rgb[0] + 1) * 127.5, 0.0), 255.0), 4) for rgb in clusters]


def write_preprocessor(model: ImageGPT, directory: Path) -> None:
    """``preprocessor_config.json`` for ``ImageGPTImageProcessor``, when the model has a palette."""
    c = model.config
    if not c.palette:
        return
    p = {"image_processor_type": "ImageGPTImageProcessor", "do_resize": True,
         "size": {"height": c.image_size, "width": c.image_size}, "resample": BOX,
         "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_color_quantize": True,
         "clusters": [[g / 127.5 - 1] * 3 for g in c.palette]}
    atomic_write_text(Path(directory) / PREPROCESSOR, json.dumps(p, indent=2) + "\n")
