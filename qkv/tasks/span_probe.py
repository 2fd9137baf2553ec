"""The span probe of masked language models (Sun et al., 2019, ERNIE 1.0): does the model
know whole named entities and phrases? Every piece of one span of a held-out text is
masked in a window around it; span accuracy counts the spans whose pieces are all the
model's top predictions, token accuracy the pieces that are. The mlm task runs it on the
Brown corpus's entities and phrases (``qkv evaluate``: ``entity_span_accuracy``, ...).
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.mlm import IGNORE, span_of_tokens
from .base import device_of


def span_windows(text: str, spans, tokenizer, n: int):
    """For each span of a text (character offsets), a window of at most ``n`` of the text's
    token ids around it and where the span's pieces lie in it: (ids, first, end)."""
    encoding = tokenizer.tokenizer.encode(text, add_special_tokens=False)
    ids, span_of = encoding.ids, span_of_tokens(encoding.offsets, spans)
    found, firsts, counts = np.unique(span_of, return_index=True, return_counts=True)
    for k, a, size in zip(found, firsts, counts):
        if k >= 0 and size <= n:
            start = max(0, min(a - (n - size) // 2, len(ids) - n))
            yield ids[start:start + n], a - start, a - start + size


def probe_batch(examples, tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, first, end) windows -> [CLS] window [SEP] with the span's pieces all [MASK]ed,
    padded: (inputs, attention mask, labels: the span's pieces, -100 elsewhere)."""
    width = max(len(ids) for ids, _, _ in examples) + 2
    inputs = torch.full((len(examples), width), tokenizer.pad_token_id)
    attention = torch.zeros_like(inputs)
    labels = torch.full_like(inputs, IGNORE)
    for row, (ids, a, b) in enumerate(examples):
        inputs[row, :len(ids) + 2] = torch.tensor([tokenizer.cls_token_id, *ids, tokenizer.sep_token_id])
        attention[row, :len(ids) + 2] = 1
        labels[row, a + 1:b + 1] = inputs[row, a + 1:b + 1]
        inputs[row, a + 1:b + 1] = tokenizer.mask_token_id
    return inputs, attention, labels


@torch.no_grad()
def span_probe(model, tokenizer, docs, seq_len: int, limit: int = 0, batch_size: int = 64) -> dict[str, float]:
    """Span and token accuracy over the spans of ``docs`` ((text, spans) pairs), each
    masked whole in a window of ``seq_len`` tokens around it; at most ``limit`` spans,
    evenly spread, when ``limit`` > 0."""
    examples = [e for text, spans in docs for e in span_windows(text, spans, tokenizer, seq_len - 2)]
    if not examples:
        return {}
    if 0 < limit < len(examples):
        examples = [examples[i] for i in np.linspace(0, len(examples) - 1, limit).round().astype(int)]
    device, spans_right, pieces_right, pieces = device_of(model), 0, 0, 0
    for start in range(0, len(examples), batch_size):
        inputs, attention, labels = probe_batch(examples[start:start + batch_size], tokenizer)
        logits, _ = model(inputs.to(device), attention.to(device), labels=labels.to(device))
        predicted = labels != IGNORE
        right = torch.ones_like(predicted)
        right[predicted] = logits.argmax(-1).cpu() == labels[predicted]
        spans_right += int(right.all(dim=1).sum())
        pieces_right += int(right[predicted].sum())
        pieces += int(predicted.sum())
    return {"span_accuracy": spans_right / len(examples), "token_accuracy": pieces_right / pieces,
            "spans": len(examples)}
