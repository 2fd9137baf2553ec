"""Claim 6b of reports/claims.md: BERT heads specialise (Clark et al. 2019, "What Does BERT
Look At?", Section 3): some heads attend to the previous or the next token, some to [SEP]
or [CLS], found by a measure over a data set, not picked by eye on one sentence.

For every head of the real all-MiniLM-L6-v2 (a 6-layer BERT), the average attention that a
word-piece token (not [CLS] or [SEP]) gives to the previous token, the next token, itself,
[CLS] and [SEP], over sentences of the Brown corpus's test split. A head "does" a pattern
when that average exceeds --threshold (Clark et al. report heads above 0.5 for the
previous/next token). One command:

    qkv data get all-minilm-l6-v2 && qkv data get brown
    python reports/heads.py
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from qkv.analysis.look import text_maps
from qkv.analysis.measures import TOKEN_PATTERNS as PATTERNS, token_pattern_attention
from qkv.data import prepared
from qkv.files import atomic_write_text
from qkv.io import load

ROOT = Path(__file__).resolve().parent.parent


def sentences(count: int, least: int = 8, most: int = 40) -> list[str]:
    """The first ``count`` sentences of ``least``-``most`` words of Brown's test split."""
    text = (prepared("brown") / "test.txt").read_text()
    found = []
    for line in text.splitlines():
        for s in re.split(r"(?<=[.!?])\s+", line.strip()):
            if least <= len(s.split()) <= most:
                found.append(s)
                if len(found) == count:
                    return found
    return found


def figure(profile: np.ndarray, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads, _ = profile.shape
    fig, axes = plt.subplots(1, len(PATTERNS), figsize=(3 * len(PATTERNS), 3), sharey=True)
    for ax, k, name in zip(axes, range(len(PATTERNS)), PATTERNS):
        im = ax.imshow(profile[:, :, k], vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
        ax.set_title(f"to {name}")
        ax.set_xlabel("head")
    axes[0].set_ylabel("layer")
    fig.colorbar(im, ax=axes, shrink=0.8, label="mean attention")
    fig.savefig(out / "heads.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a BERT folder (default: the prepared all-minilm-l6-v2)")
    p.add_argument("--count", type=int, default=1000, help="sentences")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--out", default=str(ROOT / "reports" / "heads"))
    args = p.parse_args()
    model, tokenizer = load(args.model or prepared("all-minilm-l6-v2"))
    model.eval()
    texts = sentences(args.count)
    total = (sum(token_pattern_attention(text_maps(model, tokenizer, s).layers) for s in texts) / len(texts)).numpy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure(total, out)
    found = {name: [{"layer": int(l), "head": int(h), "mean_attention": round(float(total[l, h, k]), 3)}
                    for l, h in zip(*np.nonzero(total[:, :, k] > args.threshold))]
             for k, name in enumerate(PATTERNS)}
    best = {name: dict(zip(("layer", "head"), map(int, np.unravel_index(total[:, :, k].argmax(), total.shape[:2]))),
                       mean_attention=round(float(total[:, :, k].max()), 3)) for k, name in enumerate(PATTERNS)}
    results = {"model": str(args.model or "all-minilm-l6-v2"), "sentences": len(texts), "threshold": args.threshold,
               "heads_above_threshold": found, "strongest": best, "profile": total.round(4).tolist(),
               "patterns": list(PATTERNS)}
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: results[k] for k in ("sentences", "heads_above_threshold", "strongest")}, indent=1))


if __name__ == "__main__":
    main()
