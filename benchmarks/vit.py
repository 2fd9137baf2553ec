"""qkv's ViT against Hugging Face's ViTForImageClassification: same config, same weights,
one run, as ratios.

    python benchmarks/vit.py            # ViT-Ti 224/16 at batch 32 and vit-28-small at batch 128
    python benchmarks/vit.py --quick    # fewer repetitions

For each config: inference images/s (eval, no_grad) and training images/s (forward +
cross-entropy + backward + AdamW, through each library's own API), timed alternately
(qkv, HF, qkv, HF, ...) so that a machine whose speed drifts treats both alike; the
training step's FLOP/s as a share of the machine's fp32 matmul rate; and, on a CPU with
native bf16 matmul (AMX, AVX512-BF16), training under bf16 autocast, both libraries alike.
"""
from __future__ import annotations

import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import image_classifiers  # noqa: E402

from qkv.models.vit import PRESETS  # noqa: E402

CASES = [("vit-ti-16", 32), ("vit-28-small", 128)]  # (preset, batch)


def build(preset: str):
    """HF's model, randomly initialised, and qkv's ViT with the very same weights."""
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.utils import logging

    import qkv

    logging.set_verbosity_error()
    torch.manual_seed(0)
    p = PRESETS[preset]
    hf_config = ViTConfig(**{k: p[k] for k in ("image_size", "patch_size", "num_channels", "hidden_size",
                                               "num_hidden_layers", "num_attention_heads", "intermediate_size")},
                          num_labels=p["num_labels"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                          layer_norm_eps=1e-6)
    hf = ViTForImageClassification(hf_config)
    with tempfile.TemporaryDirectory() as tmp:  # through a checkpoint directory, as users load one
        hf.save_pretrained(tmp)
        model = qkv.from_hf(tmp)
    return model, hf, p


if __name__ == "__main__":
    image_classifiers(__doc__, CASES, build)
