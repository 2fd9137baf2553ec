"""What each endpoint of ``qkv explore`` computes, as plain dicts ready for JSON.

``Explorer(run_dir)`` loads the run's model once and says what the page can show of it
(``info``): text (GPT, BERT: self-attention over the tokens of a sentence), translation (a
seq2seq Transformer: its greedy output and the cross-, encoder or decoder attention),
image (a ViT: per-head maps, attention rollout and the position-embedding similarity; a
Swin: each block's window attention), or detection (DETR, Deformable DETR: the boxes found
in an image and what each detected object's query looked at, ``qkv.analysis.look.query_looks``);
a model without attention (ResNet, the LSTM baseline) gets a sentence saying so. Everything
is computed by ``qkv.analysis``; this module only checks what a request asks for, bounds it,
and lays the numbers out.

Every error a request can cause is a ``BadRequest`` (HTTP 400) whose message says what to
change; the model is run by one request at a time (``capture`` marks the model's modules).
"""
from __future__ import annotations

import base64
import binascii
import io
import math
import re
import threading
import warnings
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..analysis import attention_rollout, capture, cls_rollout_map, image_maps, layer_names, position_similarity
from ..analysis.look import SEQ2SEQ_KINDS as KINDS, text_maps, translation_maps
from ..errors import QkvError

MAX_TOKENS = 200              # the longest text (in tokens) the page shows, or the model's context if smaller
MAX_CHARS = 5_000             # characters of a text, checked before tokenising
MAX_PIXELS = 4_000_000        # an uploaded image's width x height, checked before it is decoded
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
FUSIONS = ("mean", "max", "min")
DIGITS = 5                    # weights are rounded to this many decimals in the JSON


class BadRequest(Exception):
    """A request the explorer cannot answer; the message is shown in the page (HTTP 400)."""


def _rounded(t: torch.Tensor) -> list:
    return np.round(t.detach().float().numpy().astype(np.float64), DIGITS).tolist()


def _label(token: str) -> str:
    """A token as the page shows it: whitespace made visible."""
    return token.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def _int(body: dict, name: str, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name!r} must be an integer, got {value!r}")
    return value


def _str(body: dict, name: str, default: str | None = None) -> str | None:
    value = body.get(name, default)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name!r} must be a string, got {type(value).__name__}")
    if value is not None and len(value) > MAX_CHARS:
        raise BadRequest(f"{name!r} is {len(value):,} characters long; the explorer reads at most {MAX_CHARS:,}")
    return value


def _pick_layer(names: list[str], index: int) -> int:
    if not -len(names) <= index < len(names):
        raise BadRequest(f"layer {index} is out of range: the model has {len(names)} (0..{len(names) - 1})")
    return index % len(names)


def window_cells(hw: tuple[int, int], window: int, shift: int) -> torch.Tensor:
    """(windows, m*m): the grid cell (row-major index into the h x w grid, -1 for padding)
    of each token of each window, as a Swin block cuts its grid (``qkv.models.swin``: pad
    to a multiple of m at the right and bottom, roll up-left by ``shift``, partition); a grid
    no larger than the window is one window of min(h, w) and no shift, as there."""
    from ..nn.windows import partition

    h, w = hw
    m = window
    if min(h, w) <= m:
        m, shift = min(h, w), 0
    cells = torch.arange(h * w, dtype=torch.float32).view(1, h, w, 1)
    cells = F.pad(cells, (0, 0, 0, -w % m, 0, -h % m), value=-1.0)
    if shift:
        cells = cells.roll((-shift, -shift), dims=(1, 2))
    return partition(cells, m)[..., 0].long()


class Explorer:
    """One loaded model and what the page may ask of it."""

    def __init__(self, run_dir: str | Path):
        from ..io import load

        self.run_dir = Path(run_dir)
        self.model, self.tokenizer = load(self.run_dir)
        self.lock = threading.Lock()
        self.model_type = getattr(self.model, "model_type", type(self.model).__name__)
        self.role = getattr(self.model, "role", None)
        self.attentions = layer_names(self.model)["attentions"]
        self.mode, self.reason = self._mode()
        self._positions = None

    # -- what the model is ------------------------------------------------------------------
    def _mode(self) -> tuple[str, str | None]:
        kind = f"a {self.model_type!r} model"
        if self.role == "object_detector":
            if self._detector() is None:
                return "none", f"{kind}: the explorer reads DETR and Deformable DETR detectors only"
            return "detection", None
        if not self.attentions:
            what = "a convolutional network" if self.role == "image_classifier" else \
                "a model without multi-head attention"
            return "none", (f"{self.run_dir.name} holds {kind}, {what}: it has no attention to look at. "
                            "Open a GPT, BERT, Transformer (translation), ViT or Swin run instead.")
        if self.role == "seq2seq":
            if self.tokenizer is None:
                return "none", f"{self.run_dir.name} has no tokenizer file: the explorer cannot read a source sentence"
            return "translation", None
        if self.role == "image_classifier":
            if self._is_vit():
                return "image", None
            if self._blocks_of_windows():
                return "image", None
            return "none", f"{kind}: the explorer reads ViT-style (global) or Swin-style (window) attention only"
        if hasattr(self.model, "forward_features") and self.tokenizer is not None:
            return "text", None
        if self.tokenizer is None:
            return "none", f"{self.run_dir.name} has no tokenizer file: the explorer cannot read text for {kind}"
        return "none", f"the explorer does not know how to run {kind} (role {self.role!r})"

    def _detector(self) -> str | None:
        """"deformable" (multi-scale deformable attention), "detr" (cross-attention over the
        feature grid) or None, told apart as ``query_looks`` does."""
        from ..nn.deformable import MultiScaleDeformableAttention

        layers = getattr(getattr(self.model, "decoder", None), "layers", None)
        if not layers or not hasattr(self.model.config, "mean_std"):
            return None
        if any(isinstance(m, MultiScaleDeformableAttention) for m in self.model.modules()):
            return "deformable" if hasattr(layers[-1], "encoder_attn") else None
        return "detr" if hasattr(layers[-1], "crossattention") and hasattr(self.model, "backbone") else None

    def _is_vit(self) -> bool:
        return hasattr(self.model.config, "grid") and hasattr(getattr(self.model, "embeddings", None), "cls_token")

    def _blocks_of_windows(self) -> list[tuple[str, object, tuple[int, int], int]]:
        """(attention name, block, grid, pixels per token) of each windowed block, in order (Swin)."""
        c, out = self.model.config, []
        stages = getattr(self.model, "layers", [])
        if not all(hasattr(s, "blocks") for s in stages) or not hasattr(c, "patch_size"):
            return []
        h = w = math.ceil(c.image_size / c.patch_size)
        names = dict((id(m), n) for n, m in self.model.named_modules())
        for i, stage in enumerate(stages):
            for block in stage.blocks:
                if not hasattr(block, "shift_size"):
                    return []
                out.append((names[id(block.attn)], block, (h, w), c.patch_size << i))
            h, w = (h + 1) // 2, (w + 1) // 2
        return out

    @property
    def max_tokens(self) -> int:
        c = self.model.config
        context = getattr(c, "block_size", None) or getattr(c, "max_position_embeddings", None) or MAX_TOKENS
        return min(MAX_TOKENS, context)

    def _heads(self, names: list[str]) -> list[int]:
        modules = dict(self.model.named_modules())
        return [modules[n].num_heads for n in names]

    def info(self) -> dict:
        out = {"run": self.run_dir.resolve().name, "model_type": self.model_type, "role": self.role,
               "mode": self.mode, "reason": self.reason,
               "parameters": sum(p.numel() for p in self.model.parameters()),
               "max_tokens": self.max_tokens, "max_chars": MAX_CHARS, "max_pixels": MAX_PIXELS}
        if self.mode == "text":
            out["layers"] = self.attentions
            out["heads"] = self._heads(self.attentions)
            out["causal"] = self.role == "causal_lm"
        elif self.mode == "translation":
            out["kinds"] = {k: [n for n in self.attentions if fnmatch(n, p)] for k, p in KINDS.items()}
            out["heads"] = {k: self._heads(v) for k, v in out["kinds"].items()}
        elif self.mode == "image":
            c = self.model.config
            out["image"] = {"size": c.image_size, "channels": c.num_channels, "patch": c.patch_size,
                            "labels": c.label_names}
            if self._is_vit():
                out["image"].update(kind="vit", grid=[c.grid, c.grid])
                out["layers"] = self.attentions
            else:
                blocks = self._blocks_of_windows()
                out["image"].update(kind="swin", window=c.window_size)
                out["layers"] = [b[0] for b in blocks]
                out["grids"] = [list(b[2]) for b in blocks]
            out["heads"] = self._heads(out["layers"])
        elif self.mode == "detection":
            from ..inference.detect import PALETTE

            c, kind = self.model.config, self._detector()
            last = len(self.model.decoder.layers) - 1
            out["image"] = {"size": c.image_size, "channels": c.num_channels, "labels": c.label_names,
                            "kind": kind, "palette": PALETTE, "queries": c.num_queries}
            out["layers"] = [f"decoder.layers.{last}." + ("encoder_attn" if kind == "deformable" else "crossattention")]
            out["heads"] = [c.decoder_attention_heads]
            if kind == "deformable":
                out["image"].update(levels=c.num_feature_levels, points=c.decoder_n_points)
        return out

    def _run(self, fn, *args, **kwargs):
        """Run the model under the lock; an error the input caused becomes a BadRequest."""
        with self.lock:
            try:
                return fn(*args, **kwargs)
            except (QkvError, ValueError) as e:
                raise BadRequest(" ".join(str(e).split())) from e

    def _need(self, mode: str, what: str) -> None:
        if self.mode == "none":
            raise BadRequest(self.reason)
        if self.mode != mode:
            takes = {"text": "a sentence (POST /api/text)", "translation": "a source sentence (POST /api/translate)",
                     "image": "an image (POST /api/image)", "detection": "an image (POST /api/image)"}[self.mode]
            raise BadRequest(f"this run holds a {self.model_type!r} model: {what} is not for it; it takes {takes}")

    # -- text -------------------------------------------------------------------------------
    def text(self, body: dict) -> dict:
        """Self-attention of one layer (every head) over the tokens of ``body["text"]``."""
        self._need("text", "text")
        text = _str(body, "text")
        if not text or not text.strip():
            raise BadRequest("type some text to look at")
        layer = _pick_layer(self.attentions, _int(body, "layer", -1))
        maps = self._run(text_maps, self.model, self.tokenizer, text, self.attentions[layer],
                         max_tokens=self.max_tokens)
        return {"text": text, "layer": layer, "layer_name": maps.names[0], "queries": list(map(_label, maps.queries)),
                "keys": list(map(_label, maps.keys)), "weights": _rounded(maps.layers[0][0])}

    # -- translation ------------------------------------------------------------------------
    def translate(self, body: dict) -> dict:
        """The greedy translation of ``body["src"]`` (or the given ``tgt``) and one layer of
        its cross-attention (``kind``: cross, encoder or decoder self-attention)."""
        self._need("translation", "a translation")
        src, tgt = _str(body, "src"), _str(body, "tgt")
        kind = _str(body, "kind", "cross")
        if kind not in KINDS:
            raise BadRequest(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not src or not src.strip():
            raise BadRequest("type a source sentence to translate")
        names = [n for n in self.attentions if fnmatch(n, KINDS[kind])]
        if not names:
            raise BadRequest(f"this model has no {kind} attention")
        layer = _pick_layer(names, _int(body, "layer", -1))
        if tgt is None:  # the greedy translation, once (the page sends it back when it changes layer)
            tgt = self._run(self._greedy, src)
        maps = self._run(translation_maps, self.model, self.tokenizer, src, tgt, kind, max_tokens=self.max_tokens)
        return {"src": src, "translation": tgt, "kind": kind, "layer": layer, "layer_name": maps.names[layer],
                "queries": list(map(_label, maps.queries)), "keys": list(map(_label, maps.keys)),
                "weights": _rounded(maps.layers[layer][0])}

    @torch.no_grad()
    def _greedy(self, src: str) -> str:
        from ..analysis.look import check_length
        from ..inference.translate import translate_texts
        from ..tokenizers import special_ids

        ids = self.tokenizer.encode(src) + [special_ids(self.tokenizer)["eos_token_id"]]
        check_length(ids, self.max_tokens, "the source (with its end-of-sentence token)")
        return translate_texts(self.model, self.tokenizer, [src], beam=1, max_new_tokens=self.max_tokens - 1)[0]

    # -- images -----------------------------------------------------------------------------
    def read_image(self, data: bytes, square: bool = True):
        """Uploaded bytes -> (the image as the model sees it (PIL, its mode and size), the
        original (width, height)); refused before decoding when it has too many pixels.
        ``square``: resized to the model's image_size x image_size (a classifier); else (a
        detector, whose backbone is convolutional) read at its own size, only shrunk (aspect
        kept) where its longer side is over image_size."""
        from PIL import Image, UnidentifiedImageError

        c = self.model.config
        if not data:
            raise BadRequest("the image is empty; upload a PNG or JPEG file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, on its size
                image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
            size = image.size
            if size[0] * size[1] > MAX_PIXELS:
                raise BadRequest(f"the image is {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels; the explorer "
                                 f"takes at most {MAX_PIXELS:,} ({MAX_PIXELS / 1e6:g} megapixels): resize it "
                                 f"(the model reads {c.image_size}x{c.image_size})")
            image = image.convert("L" if c.num_channels == 1 else "RGB")
        except Image.DecompressionBombError as e:  # Pillow's own limit, far above ours: refused on its header too
            count = re.search(r"\((\d+) pixels\)", str(e))
            count = f"{int(count[1]):,}" if count else "too many"
            raise BadRequest(f"the image has {count} pixels; the explorer takes at "
                             f"most {MAX_PIXELS:,} ({MAX_PIXELS / 1e6:g} megapixels): resize it") from e
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise BadRequest(f"the upload is not an image Pillow can read ({type(e).__name__}); give a "
                             f"{', '.join(IMAGE_FORMATS)} file") from e
        if c.num_channels not in (1, 3):
            raise BadRequest(f"the model takes {c.num_channels}-channel images; the explorer reads grey or RGB")
        if square and image.size != (c.image_size, c.image_size):
            image = image.resize((c.image_size, c.image_size), Image.Resampling.BICUBIC)
        elif not square and max(image.size) > c.image_size:
            scale = c.image_size / max(image.size)
            image = image.resize((max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))),
                                 Image.Resampling.BICUBIC)
        return image, size

    def image(self, data: bytes, options: dict) -> dict:
        """The image as the model sees it, its top labels and one layer of attention (every
        head): ViT, the whole token x token map and the attention rollout of the [CLS] token;
        Swin, each window's map with the grid cell of each of its tokens."""
        from ..data.images import to_pixels

        if self.mode == "detection":
            return self.detect(data, options)
        self._need("image", "an image")
        image, size = self.read_image(data)
        fusion = _str(options, "head_fusion", "mean")
        if fusion not in FUSIONS:
            raise BadRequest(f"head_fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        discard = options.get("discard_ratio", 0.0)
        if isinstance(discard, bool) or not isinstance(discard, (int, float)) or not 0 <= discard < 1:
            raise BadRequest(f"discard_ratio must be a number in [0, 1), got {discard!r}")
        c = self.model.config
        pixels = to_pixels(np.array(image)[None], *c.mean_std)
        shown = io.BytesIO()
        image.save(shown, format="PNG")
        out = {"width": size[0], "height": size[1], "size": c.image_size,
               "shown": "data:image/png;base64," + base64.b64encode(shown.getvalue()).decode()}
        if self._is_vit():
            out.update(self._vit(pixels, _int(options, "layer", -1), fusion, float(discard)))
        else:
            out.update(self._swin(pixels, _int(options, "layer", -1)))
        return out

    def _predict(self, pixels) -> list:
        c = self.model.config
        if not getattr(c, "num_labels", 0):
            return []
        probs = self.model(pixels).softmax(-1)[0]
        top = probs.topk(min(5, probs.numel()))
        return [[c.label_names[i], round(float(p), 5)] for p, i in zip(top.values, top.indices)]

    def detect(self, data: bytes, options: dict) -> dict:
        """An object detector's detections scoring at least ``threshold`` (default 0.5), best
        first, and what each one's query looked at in the last decoder layer, as
        ``query_looks`` gives them: DETR, ``maps`` (objects, h, w), the cross-attention over
        the feature grid (mean of heads); Deformable DETR, ``points`` (objects, P, 2) as
        (x, y) in [0, 1] and their ``weights`` (objects, P), P = levels x heads x points."""
        from ..analysis.look import query_looks

        self._need("detection", "detection")
        threshold = options.get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise BadRequest(f"threshold must be a score in [0, 1], got {threshold!r}")
        image, size = self.read_image(data, square=False)
        found, looks = self._run(query_looks, self.model, np.array(image), float(threshold))
        names = self.model.config.label_names
        shown = io.BytesIO()
        image.save(shown, format="PNG")
        out = {"kind": "detection", "detector": self._detector(), "width": size[0], "height": size[1],
               "read": list(image.size), "threshold": threshold,
               "shown": "data:image/png;base64," + base64.b64encode(shown.getvalue()).decode(),
               "detections": [{"label": label, "name": names[label], "score": score, "query": query, "box": box}
                              for label, score, query, box in zip(
                                  found["labels"].tolist(), _rounded(found["scores"]), found["queries"].tolist(),
                                  _rounded(found["boxes"]))]}
        if "maps" in looks:
            out["grid"] = list(looks["maps"].shape[1:])
            out["maps"] = _rounded(looks["maps"])
        else:
            c = self.model.config
            out["sampling"] = {"levels": c.num_feature_levels, "heads": c.decoder_attention_heads,
                               "points": c.decoder_n_points}
            out["points"] = [_rounded(p) for p in looks["points"]]
            out["weights"] = [_rounded(w) for w in looks["weights"]]
        return out

    @torch.no_grad()
    def _vit_maps(self, pixels, fusion: str, discard: float):
        maps = image_maps(self.model, pixels)
        rollout = cls_rollout_map(attention_rollout(maps, fusion, discard), (self.model.config.grid,) * 2)[0]
        return maps, rollout, self._predict(pixels)

    def _vit(self, pixels, layer: int, fusion: str, discard: float) -> dict:
        layer = _pick_layer(self.attentions, layer)
        maps, rollout, top = self._run(self._vit_maps, pixels, fusion, discard)
        g = self.model.config.grid
        tokens = ["[CLS]"] + [f"{r + 1},{col + 1}" for r in range(g) for col in range(g)]
        return {"kind": "vit", "grid": [g, g], "span": self.model.config.patch_size, "layer": layer,
                "layer_name": self.attentions[layer], "prediction": top, "queries": tokens, "keys": tokens,
                "weights": _rounded(maps[layer][0]), "rollout": _rounded(rollout), "head_fusion": fusion,
                "discard_ratio": discard}

    @torch.no_grad()
    def _swin_maps(self, pixels, name: str):
        with capture(self.model, name) as seen:
            self.model.forward_features(pixels)
        return seen.maps()[0], self._predict(pixels)

    def _swin(self, pixels, layer: int) -> dict:
        blocks = self._blocks_of_windows()
        layer = _pick_layer([b[0] for b in blocks], layer)
        name, block, hw, span = blocks[layer]
        windows, top = self._run(self._swin_maps, pixels, name)  # (windows, heads, m*m, m*m)
        cells = window_cells(hw, block.window_size, block.shift_size)
        if cells.shape[0] != windows.shape[0] or cells.shape[1] != windows.shape[-1]:
            raise RuntimeError(f"{name}: {tuple(windows.shape)} window maps do not fit a {hw} grid")
        return {"kind": "swin", "grid": list(hw), "span": span, "layer": layer, "layer_name": name, "prediction": top,
                "window": math.isqrt(cells.shape[1]), "shift": block.shift_size if min(hw) > block.window_size else 0,
                "cells": cells.tolist(), "windows": _rounded(windows.transpose(0, 1))}  # (heads, windows, m*m, m*m)

    def positions(self) -> dict:
        """Cosine similarity of a ViT's position embeddings, (rows, cols, rows, cols)."""
        if self.mode != "image" or not self._is_vit():
            raise BadRequest(f"a {self.model_type!r} model has no learned position embeddings over a patch grid "
                             "(a ViT has)")
        if self._positions is None:
            g = self.model.config.grid
            sim = position_similarity(self.model.embeddings.position_embeddings.detach(), (g, g))
            self._positions = {"grid": [g, g], "similarity": _rounded(sim)}
        return self._positions


def decode_base64_image(value) -> bytes:
    """A JSON field holding an image: base64, or a data: URL of one."""
    if not isinstance(value, str) or not value:
        raise BadRequest("'image' must be the image file as base64 (or a data: URL)")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"'image' is not valid base64 ({e})") from e
