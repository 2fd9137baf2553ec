"""GPT-2 124M training on one GPU: tokens/s and MFU of qkv (bf16 autocast, the flash SDPA
kernel, eager and torch.compile) against transformers' GPT2LMHeadModel on the same batch.

    python benchmarks/gpu.py                          # GPT-2 124M, batch 16 x 1024, on cuda
    python benchmarks/gpu.py --batch 8 --steps 10     # less memory, fewer steps
    python benchmarks/gpu.py --tiny --device cpu      # a 2-layer model: checks the script runs

A step is forward (under bf16 autocast on CUDA) + cross-entropy + backward + gradient
clipping at 1.0 + AdamW (fused on CUDA), on random tokens; attention is forced onto the
flash kernel (``sdpa_kernel(FLASH_ATTENTION)``: an error, not a silent fallback, where it
is unavailable). Both libraries hold the same weights; HF runs its default SDPA attention.
Prints, per variant, milliseconds a step, tokens/s, MFU and peak GPU memory, and qkv/HF.

MFU = tokens/s x FLOPs per token / the GPU's peak dense bf16 rate, FLOPs per token counted
as nanoGPT and PaLM do: 6 N (N: the parameters but the position embeddings) + 12 L d T
(attention scores and mixing, L layers, width d, context T). The peak comes from the
device's name (H100/H200 SXM: 989 TFLOP/s; A100: 312) or ``--peak-tflops``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))

GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
TINY = dict(n_layer=2, n_head=4, n_embd=128, vocab_size=512, n_positions=128)
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def build(config: dict, device: str):
    """HF's GPT2LMHeadModel, randomly initialised, and qkv's GPT with the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    import qkv.interop.gpt2 as conv

    logging.set_verbosity_error()
    torch.manual_seed(0)
    hf_config = GPT2Config(**config, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa")
    hf = GPT2LMHeadModel(hf_config)
    model = conv.from_hf(hf_config.to_dict(), hf.state_dict())
    return model.to(device).train(), hf.to(device).train()


def peak_flops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)


def stepper(model, device: torch.device, hf: bool):
    """One training step of ``model`` on (x, y), each library through its own API."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" \
        else contextlib.nullcontext
    attention = (lambda: torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION)) \
        if device.type == "cuda" else contextlib.nullcontext

    def step(x, y):
        with autocast(), attention():
            loss = model(input_ids=x, labels=x).loss if hf else model(x, labels=y)[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_steps(step, x, y, device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds per step, peak memory in bytes) over ``steps`` steps after ``warmup``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):  # the compiled variants compile here
        step(x, y)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    sync()
    seconds = (time.perf_counter() - t0) / steps
    return seconds, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    p.add_argument("--peak-tflops", type=float, help="the GPU's peak dense bf16 TFLOP/s (default: from its name)")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model (a quick check of the script)")
    p.add_argument("--no-compile", action="store_true", help="eager variants only")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here; run on a GPU machine, or pass --device cpu --tiny")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    config = TINY if args.tiny else GPT2_124M
    model, hf = build(config, args.device)
    seq = config["n_positions"]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, config["vocab_size"], (args.batch, seq + 1), generator=g).to(device)
    x, y = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    n = sum(q.numel() for q in model.parameters()) - model.transformer.wpe.weight.numel()
    flops_per_token = 6 * n + 12 * config["n_layer"] * config["n_embd"] * seq
    peak = peak_flops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}; torch {torch.__version__}; GPT-2 {config}, {n / 1e6:.1f}M parameters without positions; "
          f"batch {args.batch} x {seq}; peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s", flush=True)

    with torch.no_grad():
        diff = (model(x[:1]).float() - hf(input_ids=x[:1]).logits.float()).abs().max().item()
    print(f"same weights: max |logit difference| = {diff:.2e} (fp32)", flush=True)

    variants = {"qkv": (model, False), "hf": (hf, True)}
    if not args.no_compile:
        variants |= {"qkv compiled": (torch.compile(model), False), "hf compiled": (torch.compile(hf), True)}
    results = {}
    for label, (m, is_hf) in variants.items():
        try:
            results[label] = time_steps(stepper(m, device, is_hf), x, y, device, args.warmup, args.steps)
        except RuntimeError as e:  # e.g. the flash kernel unavailable, out of memory
            print(f"{label}: failed ({' '.join(str(e).split())[:200]})", flush=True)
            continue
        print(f"{label}: {results[label][0] * 1e3:.1f} ms a step", flush=True)

    tokens = args.batch * seq
    print(f"\n{'':14s} {'ms/step':>9s} {'tokens/s':>10s} {'MFU':>6s} {'peak GiB':>9s} {'qkv/HF':>7s}")
    for label, (seconds, memory) in results.items():
        mfu = f"{tokens / seconds * flops_per_token / peak:.1%}" if peak else "-"
        peer = results.get(label.replace("qkv", "hf")) if label.startswith("qkv") else None
        ratio = f"{peer[0] / seconds:.2f}x" if peer else ""
        print(f"{label:14s} {seconds * 1e3:9.1f} {tokens / seconds:10,.0f} {mfu:>6s} {memory / 2**30:9.2f} {ratio:>7s}")


if __name__ == "__main__":
    main()
