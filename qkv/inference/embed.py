"""Sentence embeddings from a BERT encoder, as sentence-transformers computes them.

The embedding of a sentence is the mean of its final hidden states over its real tokens
([CLS] and [SEP] included, padding excluded), normalised to unit length (Reimers and
Gurevych, 2019, "mean" pooling); cosine similarity is then a dot product. A model folder
written by sentence-transformers says how it pools in ``1_Pooling/config.json``; qkv
honours mean and [CLS] pooling and refuses the others rather than answer differently.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


def pooling_mode(model_dir: str | Path) -> str:
    """"mean" (the default, also for a plain BERT folder) or "cls"."""
    file = Path(model_dir) / "1_Pooling" / "config.json"
    if not file.is_file():
        return "mean"
    config = json.loads(file.read_text())
    if isinstance(config.get("pooling_mode"), str):  # sentence-transformers >= 5 writes one name
        modes = [config["pooling_mode"]]
    else:  # older versions: one boolean per mode
        modes = [k[len("pooling_mode_"):] for k, v in config.items() if k.startswith("pooling_mode_") and v]
    if modes in (["mean_tokens"], ["mean"]):
        return "mean"
    if modes in (["cls_token"], ["cls"]):
        return "cls"
    raise ConfigError(f"{file}: pooling {modes} is not supported; qkv embeds with mean_tokens or cls_token")


def max_seq_length(model_dir: str | Path, model) -> int:
    """sentence-transformers' ``max_seq_length`` if the folder sets one, else the model's positions."""
    file = Path(model_dir) / "sentence_bert_config.json"
    limit = model.config.max_position_embeddings
    if file.is_file():
        limit = min(limit, json.loads(file.read_text()).get("max_seq_length", limit))
    return limit


@torch.no_grad()
def embed(model, tokenizer, sentences: list[str], *, pooling: str = "mean", max_len: int | None = None,
          truncate: bool = False, batch_size: int = 32) -> Tensor:
    """(len(sentences), hidden_size) unit vectors. A sentence longer than ``max_len``
    tokens (with [CLS] and [SEP]) is an error unless ``truncate`` is set."""
    max_len = max_len or model.config.max_position_embeddings
    encoded = []
    for s in sentences:
        ids = tokenizer.encode(s, special=True)
        if len(ids) > max_len:
            if not truncate:
                raise ValueError(f"sentence of {len(ids)} tokens exceeds the limit of {max_len}: "
                                 f"{s[:60]!r}...; shorten it or pass truncate=True (--truncate)")
            ids = ids[:max_len - 1] + ids[-1:]  # keep [SEP] last, as transformers' tokenizers do
        encoded.append(ids)
    out = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([x + [tokenizer.pad_token_id or 0] * (width - len(x)) for x in chunk])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in chunk])
        h = model.forward_features(ids, mask)
        if pooling == "cls":
            pooled = h[:, 0]
        else:
            m = mask[..., None].to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        out.append(F.normalize(pooled, dim=-1))
    return torch.cat(out)


def search(query: Tensor, corpus: Tensor, top: int) -> list[tuple[int, float]]:
    """Indices and cosine similarities of the ``top`` corpus vectors nearest the query."""
    scores = corpus @ query
    best = scores.topk(min(top, len(scores)))
    return list(zip(best.indices.tolist(), best.values.tolist()))
