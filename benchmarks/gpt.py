"""qkv's GPT against Hugging Face's GPT2LMHeadModel: same config, same weights, one run.

    python benchmarks/gpt.py            # the issue's config: 6 x 512, 8 heads, vocab 8192, context 512
    python benchmarks/gpt.py --quick    # fewer repetitions

Prints, as qkv / HF: training-step throughput (batch 8 x 256 tokens, forward + backward +
AdamW), greedy generation tokens/s at batch 1 and batch 8 (prompt 16, 256 new tokens), and
the peak memory of a training step and of generation (each measured in a fresh child
process, as resident memory above what the process held before). Also the training
step's achieved FLOP/s as a fraction of this machine's fp32 matmul rate.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import compare, in_child, matmul_flops, peak_bytes_during  # noqa: E402

CONFIG = dict(n_layer=6, n_head=8, n_embd=512, vocab_size=8192, n_positions=512)
BATCH, SEQ, PROMPT, NEW = 8, 256, 16, 256


def build(dropout: float):
    """The HF model, randomly initialised, and qkv's GPT with the very same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    import qkv.interop.gpt2 as conv

    logging.set_verbosity_error()
    torch.manual_seed(0)
    hf_config = GPT2Config(**CONFIG, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                           bos_token_id=0, eos_token_id=0)
    hf = GPT2LMHeadModel(hf_config)
    model = conv.from_hf(hf_config.to_dict(), hf.state_dict())
    return model, hf


def train_step(model, opt, window, hf: bool):
    """One step through each library's own training API on the same 256 input tokens per
    row: HF shifts ``labels`` inside the model; qkv takes next-token targets from the data
    pipeline (``window`` holds 257 tokens a row)."""
    if hf:
        loss = model(input_ids=window[:, :-1], labels=window[:, :-1]).loss
    else:
        _, loss = model(window[:, :-1], window[:, 1:])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def generate(model, prompt, hf: bool):
    if hf:
        return model.generate(prompt, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
    return model.generate(prompt, NEW, temperature=0)


def child(which: str, what: str, dropout: float) -> None:
    """Peak memory of one workload, in this (fresh) process."""
    model, hf = build(dropout)
    m = hf if which == "hf" else model
    torch.manual_seed(1)
    if what == "train":
        m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        x = torch.randint(0, CONFIG["vocab_size"], (BATCH, SEQ + 1))
        peak = peak_bytes_during(lambda: [train_step(m, opt, x, which == "hf") for _ in range(2)])
    else:
        m.eval()
        prompt = torch.randint(0, CONFIG["vocab_size"], (BATCH, PROMPT))
        with torch.no_grad():
            peak = peak_bytes_during(lambda: generate(m, prompt, which == "hf"))
    print(json.dumps({"peak_bytes": peak}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout in both models while training")
    p.add_argument("--child", nargs=2, metavar=("IMPL", "WORKLOAD"), help=argparse.SUPPRESS)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    if args.child:
        return child(*args.child, args.dropout)

    reps = 3 if args.quick else 7  # each measurement alternates qkv and HF this many times
    model, hf = build(args.dropout)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"config: {CONFIG}, dropout {args.dropout}; {n_params / 1e6:.1f}M parameters; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    x = torch.randint(0, CONFIG["vocab_size"], (BATCH, SEQ + 1))
    model.eval()
    hf.eval()
    with torch.no_grad():
        diff = (model(x[:1]) - hf(x[:1]).logits).abs().max().item()
    print(f"same weights: max |logit difference| = {diff:.2e}")

    rows = []
    # greedy generation first, while both models hold the very same weights
    for batch in (1, 8):
        prompt = torch.randint(0, CONFIG["vocab_size"], (batch, PROMPT))
        with torch.no_grad():
            same = torch.equal(generate(model, prompt, False), generate(hf, prompt, True))
            t = compare({"qkv": lambda: generate(model, prompt, False),
                         "hf": lambda: generate(hf, prompt, True)}, reps, warmup=0)
        rows.append((f"greedy tokens/s, batch {batch} ({'same tokens' if same else 'TOKENS DIFFER'})",
                     batch * NEW / t["qkv"], batch * NEW / t["hf"]))

    # training step (this changes the weights)
    model.train()
    hf.train()
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in (("qkv", model), ("hf", hf))}
    times = compare({"qkv": lambda: train_step(model, opts["qkv"], x, False),
                     "hf": lambda: train_step(hf, opts["hf"], x, True)}, reps, warmup=2)
    tokens = BATCH * SEQ
    rows.append(("train tokens/s (8x256)", tokens / times["qkv"], tokens / times["hf"]))

    # peak memory, each in a fresh process
    script = os.path.abspath(__file__)
    for what in ("train", "generate"):
        mem = {name: in_child(script, "--child", name, what, "--dropout", str(args.dropout))["peak_bytes"]
               for name in ("qkv", "hf")}
        rows.append((f"peak memory MiB, {what} (lower is better)", mem["qkv"] / 2**20, mem["hf"] / 2**20))

    print(f"\n{'':48s} {'qkv':>10s} {'HF':>10s} {'qkv/HF':>8s}")
    for label, ours, theirs in rows:
        print(f"{label:48s} {ours:10.1f} {theirs:10.1f} {ours / theirs:7.2f}x")

    c = CONFIG
    flops_per_token = 6 * (n_params - c["n_positions"] * c["n_embd"]) + 12 * c["n_layer"] * c["n_embd"] * SEQ
    peak = matmul_flops()
    achieved = flops_per_token * tokens / times["qkv"]
    achieved_hf = flops_per_token * tokens / times["hf"]
    print(f"\nfp32 matmul rate here: {peak / 1e9:.0f} GFLOP/s; training step achieves "
          f"{achieved / 1e9:.0f} GFLOP/s ({achieved / peak:.0%}) in qkv, "
          f"{achieved_hf / 1e9:.0f} GFLOP/s ({achieved_hf / peak:.0%}) in HF")


if __name__ == "__main__":
    main()
