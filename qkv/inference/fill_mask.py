"""Fill in the blanks: a masked-LM BERT's most likely tokens for each [MASK] of a text."""
from __future__ import annotations

import torch


@torch.no_grad()
def fill_mask(model, tokenizer, text: str, top: int = 5, warn=None) -> list[tuple[int, list[tuple[str, float]]]]:
    """For each [MASK] (numbered from 1), the ``top`` tokens and their probabilities.

    Errors name the problem: a model without an MLM head (its predictions would be
    random), a tokenizer without [MASK], a text with no [MASK] or longer than the model's
    positions. Words the vocabulary does not know become [UNK]; ``warn`` (a file) is told.
    """
    if getattr(getattr(model, "config", None), "head", None) != "mlm":
        head = getattr(getattr(model, "config", None), "head", type(model).__name__)
        raise ValueError(f"this model has no masked-LM head (head: {head!r}); fill-mask needs a BERT "
                         "trained with one (a `qkv train` mlm run, or a BertForMaskedLM checkpoint)")
    if tokenizer is None or getattr(tokenizer, "mask_token_id", None) is None:
        raise ValueError("the model's folder has no WordPiece tokenizer with a [MASK] token")
    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    ids = tokenizer.encode(text, special=True)
    where = [i for i, t in enumerate(ids) if t == tokenizer.mask_token_id]
    if not where:
        raise ValueError(f"the text has no [MASK] token to fill: {text!r}")
    unknown = tokenizer.unknown_words(text)
    if unknown and warn is not None:
        print(f"note: not in the vocabulary, read as [UNK]: {', '.join(unknown)}", file=warn)
    probs = model(torch.tensor([ids]))[0, where].softmax(-1)
    best = probs.topk(min(top, probs.size(-1)), dim=-1)
    return [(n + 1, [(tokenizer.id_to_token(i), p) for i, p in zip(idx.tolist(), val.tolist())])
            for n, (idx, val) in enumerate(zip(best.indices, best.values))]
