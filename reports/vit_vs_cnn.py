"""Claims 1-4 of reports/claims.md: a ViT against a CNN on Fashion-MNIST, by training-set size.

1. A ViT trails a CNN on small data (Dosovitskiy et al. 2021, Section 4.3): a ViT and a
   ResNet of similar size, trained with the same augmentation and the same number of
   optimizer steps on 1k, 5k, 20k and all 55k training images; test accuracy against size.
2. With little data the lower layers learn no local heads (ViT paper, Figure 7 right):
   mean attention distance per head for the ViT trained on 1k and on 55k images.
3. Position embeddings learn 2-D structure (ViT paper, Figure 7 centre): the trained ViT's
   position-similarity grid.
4. A ViT and a CNN see differently (Raghu et al. 2021): CKA ViT x ViT, ResNet x ResNet
   and ViT x ResNet on the test split.

One command (the runs go under --runs; figures and numbers under --out):

    python reports/vit_vs_cnn.py --runs runs/claims

Every run is an ordinary `qkv train` of configs/{vit,resnet}-fashion-mnist.toml with
overrides (printed), so any one can be repeated alone. A finished run is not trained again.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from qkv.analysis import commands
from qkv.files import atomic_write_text
from qkv.io import latest_checkpoint
from qkv.train.run import evaluate_run, train

ROOT = Path(__file__).resolve().parent.parent
MODELS = {  # similar parameter counts: 0.27M (ResNet-20) and 0.31M (ViT, 4 x 96, patch 4 -> 7x7 grid)
    "vit": ("vit-fashion-mnist.toml", ["model.patch_size=4"]),
    "resnet": ("resnet-fashion-mnist.toml", []),
}


def run_name(kind: str, size: int, seed: int) -> str:
    return f"{kind}-{size or 'all'}-seed{seed}"


def run_one(kind: str, size: int, seed: int, args) -> dict:
    """Train (unless finished) and test one model on one training-set size."""
    config, extra = MODELS[kind]
    out = Path(args.runs) / run_name(kind, size, seed)
    overrides = [f"out_dir={out}", f"seed={seed}", f"data.train_size={size}", f"train.max_steps={args.steps}",
                 f"train.batch_size={args.batch_size}", f"train.eval_interval={args.steps}",
                 f"train.ckpt_interval={args.steps}", "train.eval_batches=10", *extra]
    print(f"qkv train configs/{config} " + " ".join(f"--set {o}" for o in overrides), flush=True)
    done = latest_checkpoint(out)
    if done is None or done.name != f"step-{args.steps:06d}":
        train(ROOT / "configs" / config, overrides, progress=False)
    metrics = evaluate_run(out, "test")
    return {"model": kind, "train_size": size or 55000, "seed": seed, "run": str(out),
            "test_accuracy": metrics["accuracy"]}


def accuracy_figure(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for kind, colour in (("vit", "tab:blue"), ("resnet", "tab:orange")):
        mine = [r for r in rows if r["model"] == kind]
        sizes = sorted({r["train_size"] for r in mine})
        accs = [[r["test_accuracy"] for r in mine if r["train_size"] == s] for s in sizes]
        ax.scatter([s for s, a in zip(sizes, accs) for _ in a], [x for a in accs for x in a], s=12,
                   color=colour, alpha=0.6)
        ax.errorbar(sizes, [np.mean(a) for a in accs], yerr=[np.ptp(a) / 2 for a in accs], color=colour,
                    capsize=3, label={"vit": "ViT (0.31M)", "resnet": "ResNet-20 (0.27M)"}[kind])
    ax.set_xscale("log")
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Fashion-MNIST, same steps and augmentation\n(points: seeds; bars: half the range)")
    ax.legend()
    fig.savefig(out / "accuracy-by-size.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/claims", help="where the training runs go")
    p.add_argument("--out", default=str(ROOT / "reports" / "vit-vs-cnn"), help="figures and numbers")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000, 0], help="0 = all 55,000")
    p.add_argument("--seeds", type=int, default=3, help="seeds at the smallest size (one at the others)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows = [run_one(kind, size, seed, args) for size in args.sizes
            for seed in range(args.seeds if size == args.sizes[0] else 1) for kind in MODELS]
    accuracy_figure(rows, out)
    small, full = (Path(args.runs) / run_name("vit", size, 0) for size in (args.sizes[0], 0))
    resnet = Path(args.runs) / run_name("resnet", 0, 0)
    distance = {name: json.loads(commands.distance(run, "test", out / name, count=512).with_suffix(".json")
                                 .read_text())["distance_px"] for name, run in (("distance-small", small),
                                                                                ("distance-all", full))}
    commands.positions(full, out / "positions")
    cka = {f"{Path(a).name} x {Path(b).name}": json.loads(commands.cka(a, b, "test", out / "cka", count=512)
                                                       .with_suffix(".json").read_text())["cka"]
           for a, b in ((full, full), (resnet, resnet), (full, resnet))}
    results = {"steps": args.steps, "batch_size": args.batch_size, "runs": rows, "distance_px": distance,
               "distance_runs": {"small": str(small), "all": str(full)}, "cka": cka}
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: results[k] for k in ("runs",)}, indent=1))


if __name__ == "__main__":
    main()
