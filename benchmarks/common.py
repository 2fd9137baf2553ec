"""Shared helpers for benchmarks: timing, matmul peak, peak memory in a child process, and
the one comparison every image classifier gets (inference and training images/s)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import torch


def compare(fns: dict, repeat: int, warmup: int = 1) -> dict:
    """Median seconds per call of each function, calling them in turn (a, b, a, b, ...) so
    that a machine whose speed drifts during the run treats them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def matmul_flops(n: int = 2048, repeat: int = 10) -> float:
    """This machine's fp32 matmul rate (FLOP/s, best of ``repeat``), the yardstick for
    utilisation."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def step_flops(fn) -> int:
    """The floating-point operations of ``fn`` (matmuls, convolutions, attention), run once,
    as ``torch.utils.flop_counter`` counts them. It has no formula for the CPU's fused
    attention kernel, so attention runs on PyTorch's math path here (matmuls it counts)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    return counter.get_total_flops()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_bytes_during(fn) -> int:
    """Peak resident memory reached while running ``fn``, above the memory held before it.
    Linux keeps a high-water mark (VmHWM); writing 5 to /proc/self/clear_refs resets it."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def _data_kib() -> int:
    """Resident memory that holds data (RssAnon + RssShmem: heap, tensors, anonymous maps)."""
    with open("/proc/self/status") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith(("RssAnon:", "RssShmem:")))


def peak_data_bytes_during(fn, interval: float = 0.0002) -> int:
    """Peak resident data memory (``_data_kib``) while running ``fn``, above what was
    resident before it, sampled by a thread every ``interval`` seconds. Unlike VmHWM it
    leaves out the pages of code and files mapped in, which a first run of a code path
    faults in (and the kernel may reclaim and fault in again), and which make a workload
    of a few MiB read several MiB more or less from run to run."""
    import threading

    before = _data_kib()
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _data_kib())
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return (max(peak[0], _data_kib()) - before) * 1024


# For a child that measures memory: glibc's malloc serves every block of 128 KiB or more
# straight from the system and gives it back when freed (by default that threshold rises as
# the program runs, and freed memory can stay resident, differently from run to run).
MEASURED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def in_child(script: str, *args: str, env: dict | None = None) -> dict:
    """Run ``script`` with ``args`` in a fresh Python (its environment plus ``env``) and
    parse the JSON it prints last."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _train_step(model, opt, x, y, hf: bool, bf16: bool = False):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as the Trainer: forward and loss
        loss = model(pixel_values=x, labels=y).loss if hf else model(x, labels=y)[1]
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def image_classifiers(doc: str, cases: list[tuple[str, int]], build) -> None:
    """The main of an image-classifier benchmark: for each (preset, batch), ``build(preset)``
    gives (qkv model, HF model with the same weights, preset fields); prints inference and
    training images/s of both and their ratio, timed alternately, and the training step's
    FLOP/s against the fp32 matmul rate; on a CPU that multiplies bf16 natively (AMX,
    AVX512-BF16), training under bf16 autocast too."""
    from qkv.train.trainer import cpu_has_bf16_matmul

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    reps = 3 if args.quick else 7
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak = matmul_flops()
    rows, notes = [], []
    for preset, batch in cases:
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
        t = compare({"qkv": lambda: _train_step(model, opts["qkv"], x, y, False),
                     "hf": lambda: _train_step(hf, opts["hf"], x, y, True)}, reps, warmup=1)
        rows.append((f"{preset} training img/s, batch {batch}", batch / t["qkv"], batch / t["hf"]))
        flops = step_flops(lambda: _train_step(model, opts["qkv"], x, y, False))
        rate = {name: flops / s for name, s in t.items()}
        if cpu_has_bf16_matmul():  # the same steps under bf16 autocast (train.precision = "bf16")
            b = compare({"qkv": lambda: _train_step(model, opts["qkv"], x, y, False, bf16=True),
                         "hf": lambda: _train_step(hf, opts["hf"], x, y, True, bf16=True)}, reps, warmup=1)
            rows.append((f"  bf16 autocast (qkv {t['qkv'] / b['qkv']:.2f}x its fp32 step)",
                         batch / b["qkv"], batch / b["hf"]))
        notes.append(f"{preset}: a training step is {flops / 1e9:.0f} GFLOP (torch.utils.flop_counter); in fp32 "
                     f"qkv runs it at {rate['qkv'] / 1e9:.0f} GFLOP/s ({rate['qkv'] / peak:.0%} of the matmul "
                     f"rate), HF at {rate['hf'] / 1e9:.0f} ({rate['hf'] / peak:.0%})")
        print(f"{preset}: same weights, max |logit difference| = {diff:.2e}", flush=True)
    print(f"\n{'':52s} {'qkv':>9s} {'HF':>9s} {'qkv/HF':>8s}")
    for label, ours, theirs in rows:
        print(f"{label:52s} {ours:9.1f} {theirs:9.1f} {ours / theirs:7.2f}x")
    print(f"\nfp32 matmul rate here: {peak / 1e9:.0f} GFLOP/s")
    for note in notes:
        print(note)
