"""Claim 7 of reports/claims.md: Deformable DETR answers DETR's two known weaknesses (Zhu et
al. 2021, Section 1 and Table 1): DETR converges slowly, and it does poorly on small
objects (one coarse feature map, attention over every pixel).

DETR (configs/detr-mnist-detection.toml) and Deformable DETR
(configs/deformable-detr-mnist-detection.toml) on the same MNIST detection scenes, backbone,
augmentation, batch, learning-rate schedule and number of steps: validation mAP against
training steps (from each run's metrics.jsonl), then COCO AP small / medium / large on the
test split. One command:

    qkv data get mnist-detection
    python reports/detr_vs_deformable.py --runs runs/claims
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from qkv.files import atomic_write_text
from qkv.io import latest_checkpoint
from qkv.train.metrics import read_metrics
from qkv.train.run import evaluate_run, train

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"DETR": "detr-mnist-detection.toml", "Deformable DETR": "deformable-detr-mnist-detection.toml"}


def run(name: str, args) -> dict:
    out = Path(args.runs) / Path(CONFIGS[name]).stem
    overrides = [f"out_dir={out}", f"train.max_steps={args.steps}", f"train.eval_interval={args.eval_interval}",
                 f"train.ckpt_interval={args.eval_interval}"]
    print(f"qkv train configs/{CONFIGS[name]} " + " ".join(f"--set {o}" for o in overrides), flush=True)
    done = latest_checkpoint(out)
    if done is None or done.name != f"step-{args.steps:06d}":
        train(ROOT / "configs" / CONFIGS[name], overrides, progress=False)
    records = read_metrics(out / "metrics.jsonl")
    elapsed = {r["step"]: r["elapsed_s"] for r in records if "elapsed_s" in r}
    curve = [(r["step"], r["val_map"], r["val_map50"], elapsed.get(r["step"])) for r in records if "val_map" in r]
    test = evaluate_run(out, "test", pictures=4)
    return {"model": name, "run": str(out), "steps": args.steps, "train_s": max(r.get("elapsed_s", 0) for r in records),
            "val_map_by_step": curve, "test": {k: v for k, v in test.items() if k.startswith(("map", "loss", "images"))}}


def figure(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for r in rows:
        steps, maps, map50, seconds = zip(*r["val_map_by_step"])
        line, = ax.plot(steps, maps, marker="o", label=f"{r['model']}: mAP")
        ax.plot(steps, map50, marker=".", linestyle="--", color=line.get_color(), label=f"{r['model']}: AP50")
        bx.plot([s / 60 for s in seconds], maps, marker="o", color=line.get_color(),
                label=f"{r['model']}: mAP ({r['train_s'] / 60:.0f} min in all)")
    ax.set_xlabel("training steps (batch 32)")
    ax.set_ylabel("validation COCO AP (640 canvases)")
    ax.set_title("MNIST detection scenes: the same data, backbone, steps")
    bx.set_xlabel("training time (minutes, one CPU thread)")
    bx.set_title("the same curves against wall-clock")
    ax.legend(fontsize=8)
    bx.legend(fontsize=8)
    fig.savefig(out / "map-by-step.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/claims")
    p.add_argument("--out", default=str(ROOT / "reports" / "detr-vs-deformable"))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--eval-interval", type=int, default=250)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run(name, args) for name in CONFIGS]
    figure(rows, out)
    atomic_write_text(out / "results.json", json.dumps({"runs": rows}, indent=1) + "\n")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
