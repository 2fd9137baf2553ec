"""Running a model once to look inside it: its attention maps and hidden states, for text,
a translation or images. Everything here reads a trained model and nothing else."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..nn import capture


# the attention modules of each kind in a seq2seq model (qkv.models.transformer's names)
SEQ2SEQ_KINDS = {"cross": "*crossattention", "encoder": "encoder.*.attn", "decoder": "decoder.*.attn"}


@dataclass
class Maps:
    """Attention maps of one input: per layer (1, heads, queries, keys), with the labels of
    the queries and keys (tokens or patches)."""
    layers: list[Tensor]
    names: list[str]         # the attention modules, in layer order
    queries: list[str]
    keys: list[str]


def _forward(model, inputs: Tensor, attention_mask: Tensor | None = None):
    """One forward pass that reaches every layer (without a task head where there is one)."""
    if hasattr(model, "forward_features"):
        return model.forward_features(inputs, attention_mask) if attention_mask is not None \
            else model.forward_features(inputs)
    return model(inputs)


def text_ids(tokenizer, text: str) -> list[int]:
    """The token ids a text model reads for ``text`` (with [CLS] ... [SEP] for WordPiece)."""
    if tokenizer is None:
        raise ConfigError("this model has no tokenizer to read --text with")
    return tokenizer.encode(text, special=True) if getattr(tokenizer, "kind", "") == "wordpiece" \
        else tokenizer.encode(text)


def check_length(ids: list[int], max_tokens: int | None, what: str = "the text") -> None:
    """Refuse more than ``max_tokens`` tokens (None: any number), saying how many there are."""
    if max_tokens is not None and len(ids) > max_tokens:
        raise ConfigError(f"{what} is {len(ids)} tokens long; at most {max_tokens} can be looked at: shorten it")


@torch.no_grad()
def text_maps(model, tokenizer, text: str, pattern: str = "*", max_tokens: int | None = None) -> Maps:
    """Self-attention of a text model (GPT, BERT) over the tokens of ``text`` (at most
    ``max_tokens`` of them, else a ConfigError)."""
    ids = text_ids(tokenizer, text)
    if not ids:
        raise ConfigError("the text is empty; give --text some words")
    check_length(ids, max_tokens)
    with capture(model, pattern) as seen:
        _forward(model, torch.tensor([ids]))
    tokens = [tokenizer.decode([i]) for i in ids]
    return Maps(seen.maps(), list(seen.attentions), tokens, tokens)


@torch.no_grad()
def translation_maps(model, tokenizer, source: str, target: str | None = None, kind: str = "cross",
                     max_tokens: int | None = None) -> Maps:
    """Cross-attention (``kind="cross"``: target tokens over source tokens), encoder or
    decoder self-attention of a seq2seq model, for ``source`` and its greedy translation
    (or the given ``target``), teacher-forced; each side at most ``max_tokens`` tokens."""
    from ..inference.translate import check_seq2seq, translate_texts
    from ..tokenizers import special_ids

    check_seq2seq(model, "the model")
    ids = special_ids(tokenizer)
    src = tokenizer.encode(source) + [ids["eos_token_id"]]
    check_length(src, max_tokens, "the source (with its end-of-sentence token)")
    if target is None:
        target = translate_texts(model, tokenizer, [source], beam=1)[0]
    tgt = [ids["bos_token_id"]] + tokenizer.encode(target)
    check_length(tgt, max_tokens, "the target (with its start token)")
    pattern = SEQ2SEQ_KINDS[kind]
    with capture(model, pattern) as seen:
        model(torch.tensor([src]), torch.tensor([tgt]))
    src_tokens = [tokenizer.decode([i]) for i in src]
    tgt_tokens = [tokenizer.decode([i]) for i in tgt]
    queries = src_tokens if kind == "encoder" else tgt_tokens
    return Maps(seen.maps(), list(seen.attentions), queries, tgt_tokens if kind == "decoder" else src_tokens)


@torch.no_grad()
def image_maps(model, pixel_values: Tensor) -> list[Tensor]:
    """Per layer (B, heads, tokens, tokens) self-attention of an image model."""
    with capture(model) as seen:
        _forward(model, pixel_values)
    return seen.maps()


@torch.no_grad()
def hidden_states(model, inputs: Tensor) -> list[Tensor]:
    """Every residual layer's output (B, tokens, width), in order (for CKA)."""
    with capture(model, attentions=None, hidden="*") as seen:
        _forward(model, inputs)
    return [calls[0] for calls in seen.hidden.values()]


def relative_position_biases(model) -> dict[str, Tensor]:
    """Each block's learned relative position bias (Swin: Liu et al., 2021, Eq. 4) as
    (heads, 2M-1, 2M-1): entry [h, dy + M-1, dx + M-1] is what head h adds to the score of a
    key dy rows below and dx columns right of its query."""
    out = {}
    for name, module in model.named_modules():
        table = getattr(module, "relative_position_bias_table", None)
        if isinstance(table, torch.Tensor):
            side = int(round(table.size(0) ** 0.5))
            # the table is indexed by query minus key (Hugging Face's layout): flip it to key minus query
            out[name] = table.detach().T.reshape(-1, side, side).flip(-2, -1)
    if not out:
        raise ConfigError(f"a {getattr(model, 'model_type', type(model).__name__)!r} model has no relative "
                          "position bias (Swin has one per block)")
    return out


@torch.no_grad()
def query_looks(model, image, threshold: float = 0.5) -> tuple[dict, dict]:
    """An object detector's detections on one image (uint8 (H, W) or (H, W, 3), read at its
    size) and what each detected object's query looked at in the last decoder layer:
    ``{"maps": (objects, h, w)}``, DETR's cross-attention over the feature grid, mean of
    heads (Carion et al. 2020, Figure 6), or ``{"points": [(P, 2)], "weights": [(P,)]}``,
    Deformable DETR's sampling points (x, y in [0, 1]) over every level and head with their
    attention weights (Zhu et al. 2021, Figure 6)."""
    import numpy as np

    from ..data.images import to_pixels
    from ..inference.detect import detections
    from ..nn.deformable import MultiScaleDeformableAttention, capture_sampling

    pixels = to_pixels(np.asarray(image)[None], *model.config.mean_std).to(next(model.parameters()).device)
    last = f"decoder.layers.{len(model.decoder.layers) - 1}"
    if any(isinstance(m, MultiScaleDeformableAttention) for m in model.modules()):
        with capture_sampling(model, f"{last}.encoder_attn") as seen:
            found = detections(model, model(pixels), threshold)[0]
        sampling = seen[f"{last}.encoder_attn"][0]
        picked = [sampling.query(0, q) for q in found["queries"].tolist()]  # (L, M, K, 2), (L, M, K)
        looks = {"points": [p.flatten(0, 2).cpu() for p, _ in picked], "weights": [w.flatten().cpu() for _, w in picked]}
    else:
        grids = []  # the feature grid (h, w) the keys come from, seen as the forward makes it
        hook = model.input_projection.register_forward_hook(lambda module, args, out: grids.append(out.shape[-2:]))
        try:
            with capture(model, f"{last}.crossattention") as seen:
                found = detections(model, model(pixels), threshold)[0]
        finally:
            hook.remove()
        grid = grids[0]
        looks = {"maps": seen.maps()[0][0].mean(0)[found["queries"]].reshape(-1, *grid).cpu()}
    return {k: v.cpu() for k, v in found.items()}, looks
