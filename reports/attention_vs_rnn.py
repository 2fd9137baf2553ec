"""Claims 5 and 6a of reports/claims.md: self-attention against a recurrent network at long
range, and cross-attention as an alignment.

5. Vaswani et al. (2017, Section 4) argue that self-attention connects distant positions in
   O(1) steps where an RNN needs O(n), so long sentences should suffer less. The
   encoder-decoder Transformer (configs/transformer-bible-en-de.toml) and the attentional
   LSTM (configs/lstm-bible-en-de.toml: Luong et al. 2015) are trained on bible-en-de with
   the same wall-clock budget: each model's seconds per step are measured first (a short
   calibration run), and its step count is the budget divided by that. Then BLEU on the
   test split, by source length.
6a. Bahdanau et al. (2015) and Vaswani et al. show attention weights that align target
   words with the source words they translate: the trained Transformer's last-layer
   cross-attention on a few test verses.

Train each model alone on an idle machine (the budget is wall-clock). One command:

    qkv data get bible-en-de
    python reports/attention_vs_rnn.py    # 20 minutes each, 500 test verses: ~45 minutes
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from qkv.analysis import commands
from qkv.data import prepared
from qkv.files import atomic_write_text
from qkv.io import latest_checkpoint
from qkv.tasks.translation import BUCKETS
from qkv.train.metrics import read_metrics
from qkv.train.run import evaluate_run, train

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"transformer": "transformer-bible-en-de.toml", "lstm": "lstm-bible-en-de.toml"}
CALIBRATION_STEPS = 30


def seconds_per_step(kind: str, runs: Path) -> float:
    """Measured on a short run of the same config: steps 10..30 (after start-up)."""
    out = runs / f"calibrate-{kind}"
    if latest_checkpoint(out) is None:
        train(ROOT / "configs" / CONFIGS[kind], [f"out_dir={out}", f"train.max_steps={CALIBRATION_STEPS}",
                                                 "train.log_interval=10", f"train.eval_interval={CALIBRATION_STEPS}",
                                                 "train.eval_batches=1"], progress=False)
    at = {r["step"]: r["elapsed_s"] for r in read_metrics(out / "metrics.jsonl") if "elapsed_s" in r}
    return (at[CALIBRATION_STEPS] - at[10]) / (CALIBRATION_STEPS - 10)


def train_for(kind: str, minutes: float, runs: Path, sentences: int | None) -> dict:
    per_step = seconds_per_step(kind, runs)
    steps = max(200, int(minutes * 60 / per_step))
    out = runs / f"{kind}-bible-{minutes:g}min"
    overrides = [f"out_dir={out}", f"train.max_steps={steps}", f"train.eval_interval={max(1, steps // 5)}",
                 f"train.ckpt_interval={max(1, steps // 5)}"]
    print(f"{kind}: {per_step:.3f} s/step measured -> {steps} steps: qkv train configs/{CONFIGS[kind]} "
          + " ".join(f"--set {o}" for o in overrides), flush=True)
    train(ROOT / "configs" / CONFIGS[kind], overrides, progress=False)
    records = read_metrics(out / "metrics.jsonl")
    scores = evaluate_run(out, "test", max_sentences=sentences)
    return {"model": kind, "run": str(out), "steps": steps, "calibrated_s_per_step": round(per_step, 4),
            "train_s": max(r.get("elapsed_s", 0) for r in records),
            "val_loss": [r["val_loss"] for r in records if "val_loss" in r][-1],
            **{k: v for k, v in scores.items() if k.startswith(("bleu", "chrf", "n_src", "sentences", "beam"))}}


def bucket_names() -> list[tuple[str, str]]:
    return [(f"{lo}-{hi}" if hi < 10**6 else f"{lo}+",
             f"bleu_src_{lo}-{hi}_words" if hi < 10**6 else f"bleu_src_{lo}+_words") for lo, hi in BUCKETS]


def figure(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = bucket_names()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for r in rows:
        ax.plot([n for n, _ in names], [r.get(key, float("nan")) for _, key in names], marker="o",
                label=f"{r['model']} ({r['steps']} steps, {r['train_s'] / 60:.1f} min): BLEU {r['bleu']:.1f}")
    counts = rows[0]
    ax.set_xticks(range(len(names)), [f"{n}\n({counts.get(k.replace('bleu_', 'n_'), 0)} verses)" for n, k in names])
    ax.set_xlabel("source length (words)")
    ax.set_ylabel("test BLEU (sacrebleu)")
    ax.set_title("bible-en-de, the same wall-clock budget")
    ax.legend(fontsize=8)
    fig.savefig(out / "bleu-by-length.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def alignments(run: Path, out: Path, count: int = 3) -> list[str]:
    """Last-layer cross-attention of the Transformer on the first test verses of 10-25 words."""
    from qkv.train.config import read_run

    data = read_run(run).data
    sources = (prepared(data["name"]) / f"test.{data['src']}").read_text().splitlines()
    chosen = [s for s in sources if 10 <= len(s.split()) <= 25][:count]
    return [str(commands.attention(run, out / f"verse{i}", src=s, layer=-1)) for i, s in enumerate(chosen)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=20.0,
                   help="training budget per model (wall-clock; at 5 the LSTM does not translate yet)")
    p.add_argument("--sentences", type=int, default=500, help="score the first N test verses (0: all)")
    p.add_argument("--runs", default="runs/claims")
    p.add_argument("--out", default=str(ROOT / "reports" / "attention-vs-rnn"))
    args = p.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [train_for(kind, args.minutes, runs, args.sentences or None) for kind in CONFIGS]
    figure(rows, out)
    pictures = [str(Path(p).relative_to(out)) for p in alignments(Path(rows[0]["run"]), out / "alignments")]
    results = {"minutes": args.minutes, "buckets": [n for n, _ in bucket_names()], "runs": rows,
               "alignments": pictures}
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
