"""qkv's BERT against Hugging Face's BertForMaskedLM: one masked-LM training step, same
config, same weights, same batch, in one run.

    python benchmarks/bert.py            # hidden 256, 4 layers, 4 heads, vocab 30522, batch 16 x 128
    python benchmarks/bert.py --quick    # fewer repetitions

A step is forward + backward + AdamW on a batch masked by qkv's Masker (15% of tokens,
80/10/10), with and without dropout 0.1. Each library runs its own training API: HF
``BertForMaskedLM(input_ids, attention_mask, labels).loss`` (its default attention, SDPA),
qkv ``BERT(input_ids, labels=...)``. Prints seconds per step and the qkv/HF throughput
ratio (> 1: qkv is faster).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import compare  # noqa: E402

CONFIG = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
              vocab_size=30522, max_position_embeddings=512)
BATCH, SEQ = 16, 128


def build(dropout: float):
    from transformers import BertConfig, BertForMaskedLM
    from transformers.utils import logging

    import qkv.interop.bert as conv

    logging.set_verbosity_error()
    torch.manual_seed(0)
    hf_config = BertConfig(**CONFIG, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    hf = BertForMaskedLM(hf_config)
    model = conv.from_hf(hf_config.to_dict() | {"architectures": ["BertForMaskedLM"]}, hf.state_dict())
    return model, hf


def batch():
    from qkv.data.mlm import Masker

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, CONFIG["vocab_size"], (BATCH, SEQ), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    masker = Masker(mask_token_id=103, special_ids=[0, 100, 101, 102, 103], vocab_size=CONFIG["vocab_size"])
    return masker(ids, g)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    repeat = 3 if args.quick else 7
    x, y = batch()
    mask = torch.ones_like(x)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; BERT {CONFIG}, batch {BATCH} x {SEQ}")
    for dropout in (0.0, 0.1):
        model, hf = build(dropout)
        model.train(), hf.train()
        opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in (("qkv", model), ("hf", hf))}

        def qkv_step():
            model(x, labels=y)[1].backward()
            opts["qkv"].step()
            opts["qkv"].zero_grad(set_to_none=True)

        def hf_step():
            hf(input_ids=x, attention_mask=mask, labels=y).loss.backward()
            opts["hf"].step()
            opts["hf"].zero_grad(set_to_none=True)

        t = compare({"qkv": qkv_step, "hf": hf_step}, repeat=repeat)
        tok = BATCH * SEQ
        print(f"dropout {dropout}: MLM train step  qkv {t['qkv']:.3f} s ({tok / t['qkv']:,.0f} tok/s)  "
              f"hf {t['hf']:.3f} s ({tok / t['hf']:,.0f} tok/s)  ratio qkv/hf {t['hf'] / t['qkv']:.2f}x")


if __name__ == "__main__":
    main()
