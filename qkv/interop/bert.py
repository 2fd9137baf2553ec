"""Hugging Face BERT (``BertModel``, ``BertForMaskedLM``, ``BertForSequenceClassification``)
<-> ``qkv.BERT``.

Embeddings, pooler and heads have Hugging Face's names already. Inside each layer the
shared ``qkv.nn.Block`` names differ, and its attention fuses query/key/value into one
``c_attn`` projection, so those three matrices are concatenated (and split on the way
back). The architecture picks the head: BertForMaskedLM -> ``mlm``,
BertForSequenceClassification -> ``classifier``, BertModel -> ``none``.
"""
from __future__ import annotations

from torch import Tensor

from ..errors import ConfigError
from ..models.bert import BERT, BERTConfig
from ..nn import ACTIVATIONS
from .hf import GENERIC_CONFIG_KEYS, joined

MODEL_TYPE = "bert"
# Block name -> Hugging Face name, inside encoder.layer.N.
LAYER_RENAMES = {
    "attn.c_proj": "attention.output.dense",
    "ln_1": "attention.output.LayerNorm",
    "mlp.c_fc": "intermediate.dense",
    "mlp.c_proj": "output.dense",
    "ln_2": "output.LayerNorm",
}
QKV = ("query", "key", "value")
HEADS = {"BertForMaskedLM": "mlm", "BertForSequenceClassification": "classifier", "BertModel": "none"}
ARCHITECTURES = {head: arch for arch, head in HEADS.items()}
MAPPED = {
    "vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
    "hidden_act": "hidden_act", "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size", "layer_norm_eps": "layer_norm_eps",
    "classifier_dropout": "classifier_dropout", "pad_token_id": "pad_token_id",
}
DROPOUTS = ("hidden_dropout_prob", "attention_probs_dropout_prob")
INERT = GENERIC_CONFIG_KEYS | {"gradient_checkpointing", "num_labels"}


def config_from_hf(hf: dict, head: str) -> BERTConfig:
    unknown = sorted(set(hf) - INERT - set(MAPPED) - set(DROPOUTS)
                     - {"position_embedding_type", "add_cross_attention", "tie_word_embeddings"})
    if unknown:
        raise ConfigError(f"BERT config fields qkv does not know how to honour: {', '.join(unknown)}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"position_embedding_type={hf['position_embedding_type']!r}: qkv's BERT "
                          "has absolute positions only")
    if hf.get("add_cross_attention") or hf.get("is_decoder"):
        raise ConfigError("BERT as a decoder (is_decoder / add_cross_attention) is not supported")
    if head == "mlm" and not hf.get("tie_word_embeddings", True):
        raise ConfigError("tie_word_embeddings=false: qkv's masked-LM decoder is tied to the word embeddings")
    if hf.get("hidden_act", "gelu") not in ACTIVATIONS:
        raise ConfigError(f"hidden_act={hf['hidden_act']!r} is not one of {sorted(ACTIVATIONS)}")
    drops = {hf.get(k, 0.1) for k in DROPOUTS}
    if len(drops) > 1:
        raise ConfigError("qkv's BERT has one dropout rate; this config has "
                          + ", ".join(f"{k}={hf.get(k, 0.1)}" for k in DROPOUTS))
    values = {ours: hf[theirs] for theirs, ours in MAPPED.items() if theirs in hf}
    num_labels = len(hf["id2label"]) if hf.get("id2label") else hf.get("num_labels", 2)
    return BERTConfig(**values, dropout=drops.pop(), head=head, num_labels=num_labels,
                      add_pooler=head != "mlm")


def config_to_hf(c: BERTConfig, eos_token_id: int | None = None) -> dict:
    hf = {theirs: getattr(c, ours) for theirs, ours in MAPPED.items()}
    out = {"architectures": [ARCHITECTURES[c.head]], "model_type": MODEL_TYPE, **hf,
           **{k: c.dropout for k in DROPOUTS}, "position_embedding_type": "absolute"}
    if c.head == "classifier":
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(c.num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(c.num_labels)}
    return out


def state_dict_from_hf(sd: dict[str, Tensor], c: BERTConfig) -> dict[str, Tensor]:
    sd = {(k[len("bert."):] if k.startswith("bert.") else k): v for k, v in sd.items()
          if not k.endswith(("position_ids", "token_type_ids"))}  # buffers of older checkpoints
    out = {}
    for i in range(c.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            out[f"{p}attn.c_attn.{kind}"] = joined(sd, [f"{p}attention.self.{n}.{kind}" for n in QKV])
            for ours, theirs in LAYER_RENAMES.items():
                out[f"{p}{ours}.{kind}"] = sd.pop(f"{p}{theirs}.{kind}")
    if c.head == "mlm":
        bias = sd.pop("cls.predictions.bias", None)
        bias = sd.pop("cls.predictions.decoder.bias", bias)
        if bias is None:
            raise ConfigError("the checkpoint has no masked-LM head (cls.predictions.*)")
        out["cls.predictions.decoder.bias"] = bias
        sd.pop("cls.predictions.decoder.weight", None)  # tied to the word embeddings
        out["cls.predictions.decoder.weight"] = sd["embeddings.word_embeddings.weight"]
    if not c.add_pooler:
        sd = {k: v for k, v in sd.items() if not k.startswith("pooler.")}
    if c.head != "mlm":
        sd = {k: v for k, v in sd.items() if not k.startswith("cls.")}
    return {**sd, **out}


def state_dict_to_hf(model: BERT) -> dict[str, Tensor]:
    c, sd = model.config, dict(model.state_dict())
    out = {}
    for i in range(c.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            for n, t in zip(QKV, sd.pop(f"{p}attn.c_attn.{kind}").chunk(3, dim=0)):
                out[f"{p}attention.self.{n}.{kind}"] = t.clone()  # no shared storage in safetensors
            for ours, theirs in LAYER_RENAMES.items():
                out[f"{p}{theirs}.{kind}"] = sd.pop(f"{p}{ours}.{kind}")
    if c.head == "mlm":
        del sd["cls.predictions.decoder.weight"]  # transformers ties it to the word embeddings
        sd["cls.predictions.bias"] = sd.pop("cls.predictions.decoder.bias")
    out.update(sd)
    if c.head == "none":
        return out
    return {(k if k.startswith(("cls.", "classifier.")) else f"bert.{k}"): v for k, v in out.items()}


def from_hf(hf_config: dict, state_dict: dict[str, Tensor]) -> BERT:
    archs = hf_config.get("architectures") or ["BertModel"]
    known = [a for a in archs if a in HEADS]
    if not known:
        raise ConfigError(f"qkv loads {', '.join(HEADS)} checkpoints, not {archs}")
    config = config_from_hf(hf_config, HEADS[known[0]])
    model = BERT(config)
    sd = state_dict_from_hf(state_dict, config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ConfigError(f"the checkpoint does not match a {known[0]}: missing {sorted(missing)[:5]}, "
                          f"unexpected {sorted(unexpected)[:5]}")
    return model
