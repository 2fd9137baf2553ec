"""qkv's Swin against Hugging Face's SwinForImageClassification: same config, same weights,
one run, as ratios.

    python benchmarks/swin.py            # swin-28-tiny at batch 128 and Swin-T 224 at batch 8
    python benchmarks/swin.py --quick    # fewer repetitions

For each config: inference images/s (eval, no_grad) and training images/s (forward +
cross-entropy + backward + AdamW, through each library's own API), timed alternately
(qkv, HF, qkv, HF, ...) so that a machine whose speed drifts treats both alike. Both run
without dropout or stochastic depth.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import compare  # noqa: E402

from qkv.models.swin import PRESETS  # noqa: E402

CASES = [("swin-28-tiny", 128), ("swin-t", 8)]  # (preset, batch)


def build(preset: str):
    """HF's model, randomly initialised, and qkv's Swin with the very same weights."""
    from transformers import SwinConfig, SwinForImageClassification
    from transformers.utils import logging

    import qkv

    logging.set_verbosity_error()
    torch.manual_seed(0)
    p = PRESETS[preset]
    hf_config = SwinConfig(**{k: p[k] for k in ("image_size", "patch_size", "num_channels", "embed_dim", "depths",
                                                "num_heads", "window_size")},
                           num_labels=p["num_labels"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                           drop_path_rate=0.0)
    hf = SwinForImageClassification(hf_config)
    with tempfile.TemporaryDirectory() as tmp:  # through a checkpoint directory, as users load one
        hf.save_pretrained(tmp)
        model = qkv.from_hf(tmp)
    return model, hf, p


def train_step(model, opt, x, y, hf: bool):
    loss = model(pixel_values=x, labels=y).loss if hf else model(x, labels=y)[1]
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    reps = 3 if args.quick else 7
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for preset, batch in CASES:
        model, hf, cfg = build(preset)
        x = torch.randn(batch, cfg["num_channels"], cfg["image_size"], cfg["image_size"])
        y = torch.randint(0, cfg["num_labels"], (batch,))
        model.eval()
        hf.eval()
        with torch.no_grad():
            diff = (model(x[:2]) - hf(x[:2]).logits).abs().max().item()
            t = compare({"qkv": lambda: model(x), "hf": lambda: hf(pixel_values=x)}, reps, warmup=1)
        n = sum(q.numel() for q in model.parameters()) / 1e6
        rows.append((f"{preset} ({n:.2f}M) inference img/s, batch {batch}", batch / t["qkv"], batch / t["hf"]))
        model.train()
        hf.train()
        opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in (("qkv", model), ("hf", hf))}
        t = compare({"qkv": lambda: train_step(model, opts["qkv"], x, y, False),
                     "hf": lambda: train_step(hf, opts["hf"], x, y, True)}, reps, warmup=1)
        rows.append((f"{preset} training img/s, batch {batch}", batch / t["qkv"], batch / t["hf"]))
        print(f"{preset}: same weights, max |logit difference| = {diff:.2e}", flush=True)

    print(f"\n{'':52s} {'qkv':>9s} {'HF':>9s} {'qkv/HF':>8s}")
    for label, ours, theirs in rows:
        print(f"{label:52s} {ours:9.1f} {theirs:9.1f} {ours / theirs:7.2f}x")


if __name__ == "__main__":
    main()
