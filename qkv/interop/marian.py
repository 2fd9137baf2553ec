"""Hugging Face ``MarianMTModel`` <-> ``qkv.Transformer``.

Marian is the paper's post-LN encoder-decoder with one shared vocabulary, embeddings
tied to the output layer, and a ``final_logits_bias`` buffer. Conversion is a table of
renames, plus two concatenations: Marian's separate q/k/v projections become qkv's fused
``c_attn`` (q/k/v for self-attention, k/v for cross-attention).

Marian's sinusoidal table puts the sines in the first half of the channels and the
cosines in the second; the paper (and qkv's default) interleaves them. A checkpoint read
from Hugging Face keeps Marian's layout (``interleaved_positions=False``); a qkv model with
the paper's layout is written by permuting its residual-stream channels, an exact change
of basis: embeddings, LayerNorms, and every matrix that reads or writes the residual
stream are permuted alike, so the logits are unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ..models.transformer import Transformer, TransformerConfig
from ..nn import ACTIVATIONS
from .hf import GENERIC_CONFIG_KEYS, joined

MODEL_TYPE = "marian"
MAPPED = {
    "vocab_size": "vocab_size", "max_position_embeddings": "max_position_embeddings",
    "d_model": "d_model", "encoder_layers": "encoder_layers", "decoder_layers": "decoder_layers",
    "encoder_attention_heads": "n_head", "encoder_ffn_dim": "ffn_dim",
    "activation_function": "activation", "scale_embedding": "scale_embedding", "dropout": "dropout",
    "pad_token_id": "pad_token_id", "decoder_start_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
}
SAME_AS = {"decoder_attention_heads": "encoder_attention_heads", "decoder_ffn_dim": "encoder_ffn_dim",
           "decoder_vocab_size": "vocab_size"}
# Training-only settings (qkv uses one dropout rate; no layer drop) and initialisation.
INERT = GENERIC_CONFIG_KEYS | {"attention_dropout", "activation_dropout", "encoder_layerdrop",
                               "decoder_layerdrop", "init_std", "num_hidden_layers"}
REQUIRED_TRUE = ("share_encoder_decoder_embeddings", "tie_word_embeddings")
# qkv name -> Marian name, within one layer. Lists are concatenated along dim 0.
LAYER = {
    "attn.c_attn": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    "attn.c_proj": ["self_attn.out_proj"],
    "ln_1": ["self_attn_layer_norm"],
    "crossattention.q_attn": ["encoder_attn.q_proj"],
    "crossattention.c_attn": ["encoder_attn.k_proj", "encoder_attn.v_proj"],
    "crossattention.c_proj": ["encoder_attn.out_proj"],
    "ln_cross_attn": ["encoder_attn_layer_norm"],
    "mlp.c_fc": ["fc1"],
    "mlp.c_proj": ["fc2"],
    "ln_2": ["final_layer_norm"],
}
READS_RESIDUAL = ("attn.c_attn.weight", "crossattention.q_attn.weight", "crossattention.c_attn.weight",
                  "mlp.c_fc.weight", "shared.weight")  # permute columns
WRITES_RESIDUAL = ("attn.c_proj", "crossattention.c_proj", "mlp.c_proj", "ln_1", "ln_cross_attn", "ln_2")


def config_from_hf(hf: dict) -> TransformerConfig:
    unknown = sorted(set(hf) - INERT - set(MAPPED) - set(SAME_AS) - set(REQUIRED_TRUE))
    if unknown:
        raise ConfigError(f"Marian config fields qkv does not know how to honour: {', '.join(unknown)}")
    for key, other in SAME_AS.items():
        if hf.get(key) is not None and hf.get(key) != hf.get(other):
            raise ConfigError(f"{key}={hf[key]} differs from {other}={hf.get(other)}; qkv's Transformer "
                              "uses one value for encoder and decoder")
    for key in REQUIRED_TRUE:
        if hf.get(key, True) is not True:
            raise ConfigError(f"{key}=false: qkv's Transformer shares one embedding matrix for source, "
                              "target and output")
    if hf.get("activation_function", "gelu") not in ACTIVATIONS:
        raise ConfigError(f"activation_function={hf['activation_function']!r} is not one of {sorted(ACTIVATIONS)}")
    values = {ours: hf[theirs] for theirs, ours in MAPPED.items() if hf.get(theirs) is not None}
    values.setdefault("activation", "gelu")  # MarianConfig's defaults
    values.setdefault("scale_embedding", False)
    return TransformerConfig(**values, norm_first=False, interleaved_positions=False)


def config_to_hf(c: TransformerConfig, eos_token_id: int | None = None) -> dict:
    if c.norm_first:
        raise ConfigError("a pre-LN Transformer (norm_first=true) has no MarianMTModel twin (Marian is post-LN)")
    hf = {theirs: getattr(c, ours) for theirs, ours in MAPPED.items()}
    hf.update({k: hf[v] for k, v in SAME_AS.items()})
    return {"architectures": ["MarianMTModel"], "model_type": MODEL_TYPE, **hf,
            "attention_dropout": c.dropout, "activation_dropout": 0.0, "is_encoder_decoder": True,
            "forced_eos_token_id": c.eos_token_id, "share_encoder_decoder_embeddings": True,
            "tie_word_embeddings": True}


def _layers(sd: dict, side: str):
    n = 1 + max((int(k.split(".")[3]) for k in sd if k.startswith(f"model.{side}.layers.")), default=-1)
    return range(n)


def state_dict_from_hf(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    sd = {k if k.startswith(("model.", "lm_head", "final_logits_bias")) else f"model.{k}": v
          for k, v in sd.items()}  # MarianModel (no head) has no "model." prefix
    out = {"shared.weight": sd["model.shared.weight"]}
    out["final_logits_bias"] = sd.get("final_logits_bias", torch.zeros(1, out["shared.weight"].size(0)))
    for side in ("encoder", "decoder"):
        for i in _layers(sd, side):
            for ours, theirs in LAYER.items():
                if side == "encoder" and ours.startswith(("crossattention", "ln_cross")):
                    continue
                for p in ("weight", "bias"):
                    names = [f"model.{side}.layers.{i}.{t}.{p}" for t in theirs]
                    out[f"{side}.layers.{i}.{ours}.{p}"] = joined(sd, names)
    return out


def _split(ours_sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {"model.shared.weight": ours_sd["shared.weight"], "final_logits_bias": ours_sd["final_logits_bias"]}
    for name, t in ours_sd.items():
        if not name.startswith(("encoder.layers.", "decoder.layers.")):
            continue
        side, _, i, *rest = name.split(".")
        ours, p = ".".join(rest[:-1]), rest[-1]
        theirs = LAYER[ours]
        for t_name, chunk in zip(theirs, t.chunk(len(theirs))):
            out[f"model.{side}.layers.{i}.{t_name}.{p}"] = chunk
    return out


def to_marian_positions(sd: dict[str, Tensor], d_model: int) -> dict[str, Tensor]:
    """Permute the residual-stream channels of a qkv state dict from interleaved sin/cos to
    Marian's halves (channel 2j -> j, 2j+1 -> d/2 + j)."""
    perm = torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])
    out = {}
    for name, t in sd.items():
        if name.endswith(READS_RESIDUAL):
            t = t[:, perm]
        elif any(f".{w}." in name for w in WRITES_RESIDUAL):
            t = t[perm]
        out[name] = t
    return out


def state_dict_to_hf(model: Transformer) -> dict[str, Tensor]:
    sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    if model.config.interleaved_positions:
        sd = to_marian_positions(sd, model.config.d_model)
    return _split(sd)


def from_hf(hf_config: dict, state_dict: dict[str, Tensor]) -> Transformer:
    archs = hf_config.get("architectures") or ["MarianMTModel"]
    if not set(archs) & {"MarianMTModel", "MarianModel"}:
        raise ConfigError(f"qkv loads MarianMTModel checkpoints, not {archs}")
    model = Transformer(config_from_hf(hf_config))
    sd = state_dict_from_hf(state_dict)
    sd["lm_head.weight"] = sd["shared.weight"]
    model.load_state_dict(sd, strict=True)
    return model
