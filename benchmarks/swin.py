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

import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import image_classifiers  # noqa: E402

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


if __name__ == "__main__":
    image_classifiers(__doc__, CASES, build)
