"""qkv's GPT against Hugging Face's GPT2LMHeadModel: same config, same weights, one run.

    python benchmarks/gpt.py            # the issue's config: 6 x 512, 8 heads, vocab 8192, context 512
    python benchmarks/gpt.py --quick    # fewer repetitions

Prints, as qkv / HF, each beside its peak memory: greedy generation tokens/s at batch 1 and
batch 8 (prompt 16, 256 new tokens; whether both produce the same tokens), qkv eager and with
``compile=True`` (its one-token step through torch.compile; compiled before timing, the
seconds that took printed beside), and training-step throughput (batch 8 x 256 tokens,
forward + backward + AdamW). Peak memory is resident data
memory (heap, tensors; not code) above what the process held before the workload, each
library in a fresh child process whose malloc hands freed blocks back to the system
(``common.MEASURED_MALLOC``), so that the figure is what the workload holds at its peak.

Then batch-1 decoding against its floor: a chain of one-row matrix products over the 25
weight matrices a token reads (each once), timed in the same run with the weights laid out
(in, out) and through F.linear's (out, in); qkv's and HF's ms/token as multiples of the
faster (qkv also compiled, and inside ``matvec_layout``, which lays its weights out (in, out)
for the call and back). Last, the training step's FLOP/s against this machine's fp32 matmul rate.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import time
import warnings

import torch
import torch.nn.functional as F

from qkv.inference.generate import matvec_layout

sys.path.insert(0, os.path.dirname(__file__))
from common import (  # noqa: E402
    MEASURED_MALLOC,
    compare,
    in_child,
    matmul_flops,
    peak_data_bytes_during,
)

CONFIG = dict(n_layer=6, n_head=8, n_embd=512, vocab_size=8192, n_positions=512)
BATCH, SEQ, PROMPT, NEW = 8, 256, 16, 256
FLOOR_STEPS = 64  # chains of products per floor measurement


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
        _, loss = model(window[:, :-1], labels=window[:, 1:])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def generate(model, prompt, hf: bool, new: int = NEW, compile: bool = False):
    if hf:
        return model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
    return model.generate(prompt, new, temperature=0, compile=compile)


def decode_matrices(model) -> list[torch.Tensor]:
    """The weight matrices one decoded token reads, each once (the tied head is the embedding)."""
    mats = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)}
    return [w.detach() for w in mats.values()]


def floors(model) -> dict:
    """Functions running FLOOR_STEPS chains of one-row products over ``model``'s decoding
    matrices: (in, out) copies multiplied as ``x @ W``, and the (out, in) weights through
    F.linear; and the bytes one chain reads."""
    mats = decode_matrices(model)
    inout = [w.t().contiguous() for w in mats]
    rows = {n: torch.randn(1, n) for w in mats for n in w.shape}

    def chain_inout():
        for _ in range(FLOOR_STEPS):
            for w in inout:
                rows[w.size(0)] @ w

    def chain_linear():
        for _ in range(FLOOR_STEPS):
            for w in mats:
                F.linear(rows[w.size(1)], w)

    return {"floor (in, out)": chain_inout, "floor F.linear": chain_linear}, sum(w.nbytes for w in mats)


def child(which: str, dropout: float) -> None:
    """Peak memory of each workload of one library, in this (fresh) process: greedy
    generation at batch 1 and 8, then two training steps; freed memory is handed back to
    the system between them, and a 16-token generation before each does the lazy set-up."""
    model, hf = build(dropout)
    m = hf if which == "hf" else model
    del model, hf
    libc = ctypes.CDLL("libc.so.6")

    def measure(fn) -> int:
        gc.collect()
        libc.malloc_trim(0)
        return peak_data_bytes_during(fn)

    torch.manual_seed(1)
    out = {}
    m.eval()
    with torch.no_grad():
        for batch in (1, 8):
            prompt = torch.randint(0, CONFIG["vocab_size"], (batch, PROMPT))
            generate(m, prompt, which == "hf", 16)  # first runs load code (resident too): not generation memory
            out[f"generate {batch}"] = measure(lambda: generate(m, prompt, which == "hf"))
            if which == "qkv":
                generate(m, prompt, False, 16, compile=True)  # compiles
                out[f"generate {batch} compiled"] = measure(lambda: generate(m, prompt, False, compile=True))
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    x = torch.randint(0, CONFIG["vocab_size"], (BATCH, SEQ + 1))
    out["train"] = measure(lambda: [train_step(m, opt, x, which == "hf") for _ in range(2)])  # the 2nd holds AdamW state
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout in both models while training")
    p.add_argument("--child", metavar="IMPL", help=argparse.SUPPRESS)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    if args.child:
        return child(args.child, args.dropout)

    reps = 3 if args.quick else 4  # each measurement alternates qkv and HF this many times (batch 1)
    model, hf = build(args.dropout)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"config: {CONFIG}, dropout {args.dropout}; {n_params / 1e6:.1f}M parameters; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    x = torch.randint(0, CONFIG["vocab_size"], (BATCH, SEQ + 1))
    model.eval()
    hf.eval()
    with torch.no_grad():
        diff = (model(x[:1]) - hf(x[:1]).logits).abs().max().item()
    print(f"same weights: max |logit difference| = {diff:.2e}", flush=True)

    rows, per_token = [], {}
    # greedy generation first, while both models hold the very same weights; the tokens
    # compared are those of the timed calls (no untimed extra generations)
    for batch in (1, 8):
        prompt = torch.randint(0, CONFIG["vocab_size"], (batch, PROMPT))
        out = {}

        def qkv_inout():  # qkv decoding from (in, out) weights, laid out there and back for the call
            with matvec_layout(model):
                out["qkv, matvec_layout"] = generate(model, prompt, False)

        t0 = time.perf_counter()
        generate(model, prompt, False, 16, compile=True)
        compile_s = time.perf_counter() - t0
        fns = {"qkv": lambda: out.__setitem__("qkv", generate(model, prompt, False)),
               "hf": lambda: out.__setitem__("hf", generate(hf, prompt, True)),
               "qkv compiled": lambda: out.__setitem__("qkv compiled", generate(model, prompt, False, compile=True))}
        if batch == 1:
            floor_fns, floor_bytes = floors(model)
            fns.update(floor_fns, **{"qkv, matvec_layout": qkv_inout})
        with torch.no_grad():
            t = compare(fns, reps if batch == 1 else reps - 1, warmup=0)
        del fns
        same = all(torch.equal(tokens, out["hf"]) for tokens in out.values())
        if batch == 1:
            del floor_fns
            per_token = {name: s / (FLOOR_STEPS if name.startswith("floor") else NEW) for name, s in t.items()}
        rows.append((f"greedy tokens/s, batch {batch} ({'same tokens' if same else 'TOKENS DIFFER'})",
                     batch * NEW / t["qkv"], batch * NEW / t["hf"], f"generate {batch}"))
        rows.append((f"  qkv compiled (compiling took {compile_s:.0f} s)",
                     batch * NEW / t["qkv compiled"], batch * NEW / t["hf"], f"generate {batch} compiled"))
        print(f"timed generation at batch {batch}", flush=True)

    # training step (this changes the weights)
    model.train()
    hf.train()
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in (("qkv", model), ("hf", hf))}
    times = compare({"qkv": lambda: train_step(model, opts["qkv"], x, False),
                     "hf": lambda: train_step(hf, opts["hf"], x, True)}, reps - 1, warmup=1)
    tokens = BATCH * SEQ
    rows.append(("train tokens/s (8x256)", tokens / times["qkv"], tokens / times["hf"], "train"))

    script = os.path.abspath(__file__)
    mem = {name: in_child(script, "--child", name, "--dropout", str(args.dropout), env=MEASURED_MALLOC)
           for name in ("qkv", "hf")}

    print(f"\n{'':46s} {'qkv':>9s} {'HF':>9s} {'qkv/HF':>7s}   {'peak MiB: qkv':>13s} {'HF':>7s}")
    for label, ours, theirs, workload in rows:
        m_ours, m_theirs = mem["qkv"][workload] / 2**20, mem["hf"][workload.removesuffix(" compiled")] / 2**20
        print(f"{label:46s} {ours:9.1f} {theirs:9.1f} {ours / theirs:6.2f}x   {m_ours:13.1f} {m_theirs:7.1f}")

    floor = min(per_token["floor (in, out)"], per_token["floor F.linear"])
    print(f"\nbatch-1 decoding against its floor: one-row products over the {len(decode_matrices(model))} "
          f"weight matrices a token reads ({floor_bytes / 2**20:.1f} MiB), timed in the same run")
    for name, label in (("floor (in, out)", "floor: x @ W, weights (in, out)"),
                        ("floor F.linear", "floor: F.linear, weights (out, in)"),
                        ("qkv", "qkv generate"),
                        ("qkv, matvec_layout", "qkv generate in matvec_layout"),
                        ("qkv compiled", "qkv generate, compile=True"),
                        ("hf", "HF generate")):
        ms = per_token[name] * 1e3
        print(f"  {label:38s} {ms:6.2f} ms/token  {floor_bytes / per_token[name] / 1e9:5.1f} GB/s"
              f"  {per_token[name] / floor:5.2f}x the floor")

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
