"""Shared helpers for benchmarks: timing, matmul peak, and peak memory in a child process."""
from __future__ import annotations

import json
import subprocess
import sys
import time

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


def in_child(script: str, *args: str) -> dict:
    """Run ``script`` with ``args`` in a fresh Python and parse the JSON it prints last."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
