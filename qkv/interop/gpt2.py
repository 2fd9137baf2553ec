"""Hugging Face GPT-2 (``GPT2LMHeadModel``, ``GPT2Model``) <-> ``qkv.GPT``.

The parameter names are the same; GPT-2 stores its projections as ``Conv1D`` with the
weight laid out (in, out), so those four matrices are transposed. Every config field that
changes the computation is mapped; one qkv cannot honour is an error.
"""
from __future__ import annotations

from torch import Tensor

from ..errors import ConfigError
from ..models.gpt import GPT, GPTConfig
from ..nn import ACTIVATIONS
from .hf import GENERIC_CONFIG_KEYS

MODEL_TYPE = "gpt2"
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Fields that do not change the forward computation of the language model.
INERT = GENERIC_CONFIG_KEYS | {
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
    "summary_first_dropout",  # the multiple-choice head of GPT2DoubleHeadsModel
    "reorder_and_upcast_attn",  # an fp16 overflow guard; in fp32 the same attention
}
MAPPED = {
    "vocab_size": "vocab_size", "n_positions": "block_size", "n_layer": "n_layer", "n_head": "n_head",
    "n_embd": "n_embd", "n_inner": "n_inner", "activation_function": "activation",
    "layer_norm_epsilon": "layer_norm_eps", "tie_word_embeddings": "tie_word_embeddings",
    "scale_attn_weights": "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx": "scale_attn_by_inverse_layer_idx",
}
DROPOUTS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")


def config_from_hf(hf: dict) -> GPTConfig:
    unknown = sorted(set(hf) - INERT - set(MAPPED) - set(DROPOUTS) - {"n_ctx", "add_cross_attention"})
    if unknown:
        raise ConfigError(f"GPT-2 config fields qkv does not know how to honour: {', '.join(unknown)}")
    if hf.get("add_cross_attention"):
        raise ConfigError("add_cross_attention=true (GPT-2 as a decoder with cross-attention) is not supported")
    if hf.get("n_ctx", hf.get("n_positions")) != hf.get("n_positions"):
        raise ConfigError(f"n_ctx={hf['n_ctx']} differs from n_positions={hf.get('n_positions')}")
    if hf.get("activation_function", "gelu_new") not in ACTIVATIONS:
        raise ConfigError(f"activation_function={hf['activation_function']!r} is not one of {sorted(ACTIVATIONS)}")
    drops = {hf.get(k, 0.1) for k in DROPOUTS}
    if len(drops) > 1:
        raise ConfigError(f"qkv's GPT has one dropout rate; this config has {', '.join(f'{k}={hf.get(k, 0.1)}' for k in DROPOUTS)}")
    values = {ours: hf[theirs] for theirs, ours in MAPPED.items() if theirs in hf}
    return GPTConfig(**values, dropout=drops.pop(), bias=True)


def config_to_hf(c: GPTConfig, eos_token_id: int | None = None) -> dict:
    if not c.bias:
        raise ConfigError("GPT-2 has biases everywhere; a bias=false model has no GPT-2 twin")
    if c.norm != "layernorm" or c.lm_head_size not in (None, c.vocab_size):
        raise ConfigError(f"GPT-2 has LayerNorm and a head over the whole vocabulary; a model with norm={c.norm!r}, "
                          f"lm_head_size={c.lm_head_size} has no GPT-2 twin")
    hf = {theirs: getattr(c, ours) for theirs, ours in MAPPED.items()}
    return {"architectures": ["GPT2LMHeadModel"], "model_type": MODEL_TYPE, **hf,
            **{k: c.dropout for k in DROPOUTS}, "bos_token_id": eos_token_id, "eos_token_id": eos_token_id}


def state_dict_from_hf(sd: dict[str, Tensor], c: GPTConfig) -> dict[str, Tensor]:
    out = {}
    for name, t in sd.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")) and t.dim() != 1:
            continue  # old checkpoints saved the causal-mask buffers
        name = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
        out[name] = t.t() if name.endswith(TRANSPOSED) else t
    if c.tie_word_embeddings:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    elif "lm_head.weight" not in out:
        raise ConfigError("tie_word_embeddings=false but the checkpoint has no lm_head.weight")
    return out


def state_dict_to_hf(model: GPT) -> dict[str, Tensor]:
    sd = {n: (t.t() if n.endswith(TRANSPOSED) else t) for n, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        del sd["lm_head.weight"]  # transformers ties it back to transformer.wte.weight
    return sd


def from_hf(hf_config: dict, state_dict: dict[str, Tensor]) -> GPT:
    archs = hf_config.get("architectures") or ["GPT2LMHeadModel"]
    if not set(archs) & {"GPT2LMHeadModel", "GPT2Model"}:
        raise ConfigError(f"qkv loads GPT2LMHeadModel and GPT2Model checkpoints, not {archs}")
    config = config_from_hf(hf_config)
    model = GPT(config)
    model.load_state_dict(state_dict_from_hf(state_dict, config), strict=True)
    return model
