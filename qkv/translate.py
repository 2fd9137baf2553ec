"""Translating text with a trained sequence-to-sequence model (qkv.Transformer or the LSTM
baseline): encode, batch by length, decode (``qkv.generate.translate``), detokenise."""
from __future__ import annotations

import torch

from .generate import translate
from .tokenizers import special_ids

SEQ2SEQ = ("transformer", "lstm_seq2seq")  # model types that implement the decoding protocol


def check_seq2seq(model, where) -> None:
    if getattr(model, "model_type", None) not in SEQ2SEQ:
        raise ValueError(f"{where} holds a {getattr(model, 'model_type', type(model).__name__)!r} model, "
                         f"not a translation model ({', '.join(SEQ2SEQ)}); give the run directory of a "
                         "`qkv train` run with task = \"translation\"")


def encode_sources(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """Source ids + EOS per text; an empty text, or one longer than the model's positions,
    is an error naming its line (1-based)."""
    eos = special_ids(tokenizer)["eos_token_id"]
    out = []
    for n, text in enumerate(texts, 1):
        if not text.strip():
            raise ValueError(f"line {n} is empty; there is nothing to translate")
        ids = tokenizer.encode(text) + [eos]
        if len(ids) > max_len:
            raise ValueError(f"line {n} has {len(ids)} tokens with EOS but the model reads at most {max_len} "
                             "(max_position_embeddings); split it into shorter sentences")
        out.append(ids)
    return out


def translate_texts(model, tokenizer, texts: list[str], *, beam: int = 4, length_penalty: float = 0.6,
                    max_tokens: int = 4096, max_new_tokens: int | None = None) -> list[str]:
    """Translations of ``texts`` (in order), decoded in batches of about ``max_tokens``
    source tokens of similar length."""
    pad = special_ids(tokenizer)["pad_token_id"]
    ids = encode_sources(tokenizer, texts, model.config.max_position_embeddings)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and len(ids[order[end]]) * (end - start + 1) * beam <= max_tokens:
            end += 1
        rows = order[start:end]
        S = max(len(ids[i]) for i in rows)
        batch = torch.full((len(rows), S), pad)
        mask = torch.zeros(len(rows), S, dtype=torch.long)
        for r, i in enumerate(rows):
            batch[r, :len(ids[i])] = torch.tensor(ids[i])
            mask[r, :len(ids[i])] = 1
        for i, hyp in zip(rows, translate(model, batch, mask, beam=beam, length_penalty=length_penalty,
                                          max_new_tokens=max_new_tokens)):
            out[i] = tokenizer.decode(hyp).strip()
        start = end
    return out
