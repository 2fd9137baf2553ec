"""Translating with a sequence-to-sequence model (qkv.Transformer, the LSTM baseline, any
model of role "seq2seq"): batched greedy decoding and beam search over token ids
(``translate``), and text in, text out (``translate_texts``: encode, batch by length,
decode, detokenise).

A seq2seq model implements the decoding protocol: ``start_decoding(input_ids,
attention_mask, max_new_tokens) -> state`` (runs the encoder once), ``decode_step(state,
tokens (N,)) -> (logits (N, V), state)`` (the first call gets BOS for every row) and
``reorder_state(state, index (N',)) -> state``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ..tokenizers import special_ids


def check_seq2seq(model, where) -> None:
    if getattr(model, "role", None) != "seq2seq":
        raise ConfigError(f"{where} holds a {getattr(model, 'model_type', type(model).__name__)!r} model, "
                          "not a translation (seq2seq) model; give the run directory of a `qkv train` run "
                          "with task = \"translation\"")


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al., 2016), as in the paper (alpha 0.6)."""
    return ((5 + length) / 6) ** alpha


def default_max_new_tokens(model, source_len: int) -> int:
    """2 * source length + 10 (counting the EOS), within the model's positions."""
    limit = getattr(model.config, "max_position_embeddings", None) or 10**9
    return min(2 * source_len + 10, limit)


def _greedy(model, state, n: int, max_new: int, bos: int, eos: int, device) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(n)]
    active = torch.arange(n, device=device)  # the sentences still decoding, one row each
    tokens = torch.full((n,), bos, dtype=torch.long, device=device)
    for _ in range(max_new):
        logits, state = model.decode_step(state, tokens)
        tokens = logits.argmax(-1)
        for sentence, token in zip(active.tolist(), tokens.tolist()):
            if token != eos:
                out[sentence].append(token)
        alive = tokens != eos
        if not alive.all():  # drop finished rows: the rest decode in a smaller batch
            keep = alive.nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            state, active, tokens = model.reorder_state(state, keep), active[keep], tokens[keep]
    return out


def beam_search(model, state, n: int, beam: int, max_new: int, bos: int, eos: int,
                alpha: float, device) -> list[list[int]]:
    """Batched beam search over ``n`` sentences with ``beam`` hypotheses each.

    Each step extends every live hypothesis by every token and keeps the ``beam`` best
    non-EOS extensions per sentence (by summed log-probability); an EOS among the
    ``beam`` best ends a hypothesis, scored log P / lp(length incl. EOS). A sentence is done
    once it has ``beam`` finished hypotheses (as fairseq), or at ``max_new`` tokens, where
    its live hypotheses are finished as they stand; the best score wins. Done sentences
    leave the batch.
    """
    V = model.config.vocab_size
    state = model.reorder_state(state, torch.arange(n, device=device).repeat_interleave(beam))
    scores = torch.full((n, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start as the same empty hypothesis: expand only one
    seqs = torch.zeros(n, beam, 0, dtype=torch.long, device=device)
    tokens = torch.full((n * beam,), bos, dtype=torch.long, device=device)
    active = torch.arange(n, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
    rank = torch.arange(2 * beam, device=device)
    for step in range(max_new):
        logits, state = model.decode_step(state, tokens)
        m = active.numel()
        logp = logits.float().log_softmax(-1).view(m, beam, V)
        top_s, top_i = (scores[:, :, None] + logp).view(m, beam * V).topk(2 * beam, dim=1)
        from_beam, token = top_i // V, top_i % V
        is_eos = token == eos
        lp = length_penalty(step + 1, alpha)
        for r, j in is_eos[:, :beam].nonzero().tolist():
            if top_s[r, j] > float("-inf"):
                finished[active[r]].append((top_s[r, j].item() / lp, seqs[r, from_beam[r, j]].tolist()))
        pick = (is_eos.long() * 2 * beam + rank).argsort(dim=1)[:, :beam]  # best non-EOS first
        scores, from_beam, token = top_s.gather(1, pick), from_beam.gather(1, pick), token.gather(1, pick)
        seqs = torch.cat([seqs.gather(1, from_beam[:, :, None].expand(-1, -1, seqs.size(2))),
                          token[:, :, None]], dim=2)
        last = step == max_new - 1
        done = []
        for r in range(m):
            if last:
                finished[active[r]] += [(s / lp, h) for s, h in zip(scores[r].tolist(), seqs[r].tolist())
                                        if s > float("-inf")]
            done.append(last or len(finished[active[r]]) >= beam)
        keep = (~torch.tensor(done, device=device)).nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        rows = ((torch.arange(m, device=device) * beam)[:, None] + from_beam)[keep].flatten()
        state = model.reorder_state(state, rows)
        scores, seqs, token, active = scores[keep], seqs[keep], token[keep], active[keep]
        tokens = token.flatten()
    return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]


@torch.no_grad()
def translate(model, input_ids: Tensor, attention_mask: Tensor | None = None, *, beam: int = 1,
              max_new_tokens: int | None = None, length_penalty: float = 0.6) -> list[list[int]]:
    """Target token ids (no BOS/EOS) for each source row of ``input_ids`` (B, S), padded on
    the right with ``attention_mask`` 0 on the padding. ``beam=1`` is greedy decoding;
    ``length_penalty`` is alpha of lp (beam search only). At most ``max_new_tokens`` tokens
    (EOS included) per sentence; default ``default_max_new_tokens``."""
    if input_ids.dim() != 2 or input_ids.size(1) == 0:
        raise ValueError(f"input_ids must be (batch, source_len) with source_len > 0, got {tuple(input_ids.shape)}")
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    max_new = max_new_tokens if max_new_tokens is not None else default_max_new_tokens(model, input_ids.size(1))
    if max_new < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new}")
    model.eval()
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    mask = attention_mask.to(device) if attention_mask is not None else None
    c = model.config
    state = model.start_decoding(ids, mask, max_new)
    if beam == 1:
        return _greedy(model, state, ids.size(0), max_new, c.bos_token_id, c.eos_token_id, device)
    return beam_search(model, state, ids.size(0), beam, max_new, c.bos_token_id, c.eos_token_id,
                       length_penalty, device)


def encode_sources(tokenizer, texts: list[str], max_len: int) -> dict[int, list[int]]:
    """Source ids + EOS of each non-empty text, by its index; a text longer than the model's
    positions is an error naming its line (1-based, empty lines counted)."""
    eos = special_ids(tokenizer)["eos_token_id"]
    out = {}
    for i, text in enumerate(texts):
        if not text.strip():
            continue
        ids = tokenizer.encode(text) + [eos]
        if len(ids) > max_len:
            raise ConfigError(f"line {i + 1} has {len(ids)} tokens with EOS but the model reads at most "
                              f"{max_len} (max_position_embeddings); split it into shorter sentences")
        out[i] = ids
    return out


def translate_texts(model, tokenizer, texts: list[str], *, beam: int = 4, length_penalty: float = 0.6,
                    max_tokens: int = 4096, max_new_tokens: int | None = None) -> list[str]:
    """Translations of ``texts`` (in order; an empty text gives an empty translation),
    decoded in batches of about ``max_tokens`` source tokens of similar length."""
    pad = special_ids(tokenizer)["pad_token_id"]
    ids = encode_sources(tokenizer, texts, model.config.max_position_embeddings)
    order = sorted(ids, key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(texts)
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
