"""Gather every experiment's numbers and figures into reports/claims.md: each claim of the
seeds, the evidence measured here, and whether it held. A claim that did not hold is
written as not holding. Run the experiments first (each is one command):

    python reports/vit_vs_cnn.py          # claims 1-4
    python reports/attention_vs_rnn.py    # claims 5 and 6a
    python reports/heads.py               # claim 6b
    python reports/detr_vs_deformable.py  # claim 7
    qkv train configs/igpt-fashion-mnist.toml && qkv probe runs/igpt-fashion-mnist --out reports/igpt  # claim 8
    python reports/claims.py              # this page

An experiment whose results.json is missing is listed as not run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from qkv.files import atomic_write_text

HERE = Path(__file__).resolve().parent


def read(name: str) -> dict | None:
    file = HERE / name / ("probe.json" if name == "igpt" else "results.json")
    return json.loads(file.read_text()) if file.is_file() else None


def verdict(held: bool) -> str:
    return "**held**" if held else "**did not hold**"


def vit_vs_cnn(r: dict) -> list[tuple[str, str, str, list[str]]]:
    """Claims 1-4, each as (claim, evidence, verdict, figures)."""
    rows, claims = r["runs"], []
    sizes = sorted({x["train_size"] for x in rows})
    mean = {(m, s): np.mean([x["test_accuracy"] for x in rows if x["model"] == m and x["train_size"] == s])
            for m in ("vit", "resnet") for s in sizes}
    spread = {(m, s): np.ptp([x["test_accuracy"] for x in rows if x["model"] == m and x["train_size"] == s])
              for m in ("vit", "resnet") for s in sizes}
    seeds = {s: len([x for x in rows if x["model"] == "vit" and x["train_size"] == s]) for s in sizes}

    def cell(m: str, s: int) -> str:
        return f"{mean[m, s]:.2%}" + (f" (range {spread[m, s]:.1%})" if seeds[s] > 1 else "")

    table = ["| training images | seeds | ViT | ResNet | ResNet - ViT |", "|---:|---:|---:|---:|---:|"]
    table += [f"| {s:,} | {seeds[s]} | {cell('vit', s)} | {cell('resnet', s)} | "
              f"{mean['resnet', s] - mean['vit', s]:+.2%} |" for s in sizes]
    gaps = [mean["resnet", s] - mean["vit", s] for s in sizes]
    claims.append((
        "1. A ViT trails a CNN when trained on little data, and the gap closes as the data grows "
        "(Dosovitskiy et al. 2021, Section 4.3)",
        f"Fashion-MNIST, the same augmentation and {r['steps']} steps of {r['batch_size']} for every size "
        f"(the same number of optimizer steps, not the same wall-clock):\n\n" + "\n".join(table),
        verdict(gaps[0] > 0 and gaps[-1] < gaps[0]) + f": the CNN leads by {gaps[0]:+.1%} at {sizes[0]:,} images "
        f"and by {gaps[-1]:+.1%} at {sizes[-1]:,}",
        ["vit-vs-cnn/accuracy-by-size.png"]))

    small, full = (np.array(r["distance_px"][k]) for k in ("distance-small", "distance-all"))
    claims.append((
        "2. With little data the lower layers learn no local heads; with more data some first-layer "
        "heads attend locally (ViT paper, Figure 7 right; Raghu et al. 2021, Section 4)",
        f"Mean attention distance (pixels, 512 test images; 7x7 grid of 4-px patches, uniform attention "
        f"would give ~{uniform_distance(7, 4):.1f}) of the first layer's heads: trained on "
        f"{sizes[0]:,} images {', '.join(f'{d:.1f}' for d in small[0])}; on all {sizes[-1]:,} "
        f"{', '.join(f'{d:.1f}' for d in full[0])}. Per layer (min-max): "
        + "; ".join(f"layer {i + 1}: {a.min():.1f}-{a.max():.1f} vs {b.min():.1f}-{b.max():.1f}"
                    for i, (a, b) in enumerate(zip(small, full))),
        verdict(full[0].min() < small[0].min() - 1.0) + f": the most local first-layer head is at "
        f"{small[0].min():.1f} px with {sizes[0]:,} images and {full[0].min():.1f} px with all of them",
        ["vit-vs-cnn/distance-small/distance-test.png", "vit-vs-cnn/distance-all/distance-test.png"]))

    sim = np.array(json.loads((HERE / "vit-vs-cnn" / "positions" / "positions.json").read_text())["similarity"])
    g = sim.shape[0]
    coords = np.array([(i, j) for i in range(g) for j in range(g)])
    flat = sim.reshape(g * g, g * g)
    dist = np.abs(coords[:, None] - coords[None]).sum(-1)
    off = ~np.eye(g * g, dtype=bool)
    rho = spearmanr(flat[off], dist[off]).statistic
    same_line = (dist == np.abs(coords[:, None] - coords[None]).max(-1)) & off  # same row or column
    claims.append((
        "3. Position embeddings learn the 2-D structure of the image: nearby patches, and patches in the "
        "same row or column, get similar embeddings (ViT paper, Figure 7 centre)",
        f"The ViT trained on all images, {g}x{g} grid: Spearman correlation between the cosine similarity of "
        f"two patches' embeddings and their grid distance (Manhattan) {rho:.2f}; mean similarity of patches "
        f"in the same row or column {flat[same_line].mean():.2f}, of the others {flat[off & ~same_line].mean():.2f}",
        verdict(rho < -0.3 and flat[same_line].mean() > flat[off & ~same_line].mean()),
        ["vit-vs-cnn/positions/positions.png"]))

    cka = {k: np.array(v) for k, v in r["cka"].items()}
    vit_vit, res_res, vit_res = (cka[k] for k in cka)
    upper = lambda m: m[np.triu_indices(len(m), 1)].mean()  # noqa: E731
    claims.append((
        "4. A ViT's representations are more uniform across its layers than a ResNet's, and the two "
        "models' layers are less alike than layers within one model (Raghu et al. 2021, Figures 1-2)",
        f"Linear CKA (minibatch, 512 test images) of the models trained on all images: mean over pairs of "
        f"different layers, ViT x ViT {upper(vit_vit):.2f}, ResNet x ResNet {upper(res_res):.2f}; "
        f"ViT x ResNet mean {vit_res.mean():.2f} (max {vit_res.max():.2f})",
        verdict(upper(vit_vit) > upper(res_res) and vit_res.mean() < min(upper(vit_vit), upper(res_res))),
        ["vit-vs-cnn/cka/" + p.name for p in sorted((HERE / "vit-vs-cnn" / "cka").glob("*.png"))]))
    return claims


def uniform_distance(grid: int, patch: int) -> float:
    """The mean distance between two patch centres of a grid (attention spread evenly)."""
    c = np.array([(i, j) for i in range(grid) for j in range(grid)], float) * patch
    return float(np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)).mean())


def attention_vs_rnn(r: dict) -> list[tuple[str, str, str, list[str]]]:
    runs = {x["model"]: x for x in r["runs"]}
    t, l = runs["transformer"], runs["lstm"]
    keys = [k for k in t if k.startswith("bleu_src_")]
    table = ["| source words | verses | Transformer | LSTM + attention |", "|---|---:|---:|---:|"]
    table += [f"| {k[len('bleu_src_'):-len('_words')]} | {t.get(k.replace('bleu_', 'n_'), 0)} | {t[k]:.1f} | {l.get(k, float('nan')):.1f} |"
              for k in keys]
    diffs = [t[k] - l.get(k, float("nan")) for k in keys]
    claims = [(
        "5. Self-attention handles long sentences better than a recurrent network: the Transformer's "
        "advantage grows with the source length (Vaswani et al. 2017, Section 4)",
        f"bible-en-de, {r['minutes']:g} minutes of training each (calibrated steps: Transformer {t['steps']} "
        f"in {t['train_s'] / 60:.1f} min, LSTM {l['steps']} in {l['train_s'] / 60:.1f} min), test BLEU "
        f"(beam {t.get('beam', 4)}, {t['sentences']} test verses): Transformer {t['bleu']:.1f}, LSTM {l['bleu']:.1f}; by source length:\n\n"
        + "\n".join(table),
        ("**not decided**: the LSTM does not translate at this budget (BLEU "
         f"{l['bleu']:.1f}); both need more time" if l["bleu"] < 1 else
         verdict(diffs[-1] > 0 and diffs[-1] > diffs[0]) + f": Transformer minus LSTM {diffs[0]:+.1f} BLEU on the "
         f"shortest sources and {diffs[-1]:+.1f} on the longest ({t.get(keys[-1].replace('bleu_', 'n_'), 0)} "
         f"verses). Relative to its own score on the shortest, the Transformer keeps "
         f"{t[keys[-1]] / t[keys[0]]:.0%} on the longest and the LSTM {l[keys[-1]] / l[keys[0]]:.0%}; the test "
         "above is on BLEU differences, as decided before the run"),
        ["attention-vs-rnn/bleu-by-length.png"])]
    rhos = []
    for png in r["alignments"]:
        numbers = json.loads((HERE / "attention-vs-rnn" / png).with_suffix(".json").read_text())
        weights = np.array(numbers["weights"]).mean(0)[1:-1]   # mean of heads; target tokens after <s>, before </s>
        if len(weights) > 2:
            rhos.append(spearmanr(np.arange(len(weights)), weights.argmax(-1)).statistic)
    claims.append((
        "6a. Cross-attention aligns each target word with the source words it translates, in order "
        "(Bahdanau et al. 2015; Vaswani et al. 2017)",
        f"The Transformer's last-layer cross-attention (mean of heads) on {len(rhos)} test verses: Spearman "
        f"correlation between a target token's position and the source position it attends to most: "
        f"{', '.join(f'{x:.2f}' for x in rhos)}",
        verdict(bool(rhos) and float(np.mean(rhos)) > 0.5),
        ["attention-vs-rnn/" + p for p in r["alignments"]]))
    return claims


def heads(r: dict) -> list[tuple[str, str, str, list[str]]]:
    found, best = r["heads_above_threshold"], r["strongest"]
    lines = "; ".join(f"to {p}: " + (", ".join(f"L{h['layer']}H{h['head']} ({h['mean_attention']:.2f})"
                                            for h in found[p]) or f"none (best L{best[p]['layer']}H{best[p]['head']}, "
                                                                  f"{best[p]['mean_attention']:.2f})")
                      for p in r["patterns"])
    return [(
        "6b. Some BERT heads specialise: they attend to the previous token, to the next token, or to a "
        "special token (Clark et al. 2019, Section 3)",
        f"all-MiniLM-L6-v2 (real weights), {r['sentences']} Brown test sentences: heads whose mean attention "
        f"to a pattern exceeds {r['threshold']} (layer L, head H, from 0): {lines}",
        verdict(bool(found["previous"]) and bool(found["next"])),
        ["heads/heads.png"])]


def detr_vs_deformable(r: dict) -> list[tuple[str, str, str, list[str]]]:
    runs = {x["model"]: x for x in r["runs"]}
    d, f = runs["DETR"], runs["Deformable DETR"]
    curve = lambda x: ", ".join(f"{s}: {m:.3f}" for s, m, *_ in x["val_map_by_step"])  # noqa: E731
    ahead = all(b[1] > a[1] for a, b in zip(d["val_map_by_step"], f["val_map_by_step"]))
    table = ["| | steps | training | mAP | AP50 | AP75 | AP small | AP medium |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {x['model']} | {x['steps']} | {x['train_s'] / 60:.1f} min | " + " | ".join(
        f"{x['test'][k]:.3f}" for k in ("map", "map50", "map75", "map_small", "map_medium")) + " |" for x in (d, f)]
    small_gain = f["test"]["map_small"] - d["test"]["map_small"]
    return [(
        "7a. Deformable DETR converges faster than DETR (Zhu et al. 2021, Figure 3)",
        f"Validation mAP (640 canvases) against steps on MNIST detection scenes, the same data, backbone, "
        f"augmentation and schedule: DETR {curve(d)}; Deformable DETR {curve(f)}",
        verdict(ahead) + (": Deformable DETR is ahead at every evaluation" if ahead else
                          ": Deformable DETR is not ahead at every evaluation"),
        ["detr-vs-deformable/map-by-step.png"]), (
        "7b. Deformable DETR finds small objects better than DETR (Zhu et al. 2021, Table 1)",
        "COCO AP on the test split (2,000 canvases; small = under 32x32 px):\n\n" + "\n".join(table),
        verdict(small_gain > 0) + f": AP small {small_gain:+.3f} for Deformable DETR",
        [])]


def igpt_probe(r: dict) -> list[tuple[str, str, str, list[str]]]:
    acc, layers = r["accuracy"], r["layers"]
    best = layers[acc.index(max(acc))]
    return [(
        "8. Probed linearly, a generative model of pixels classifies best from the middle of the network, "
        "not from its last layer (Chen et al. 2020, Figure 2)",
        f"iGPT (configs/igpt-fashion-mnist.toml: 4 layers x 128, 14x14 pixels, {len(r['palette'])} grey levels) "
        f"trained on Fashion-MNIST; logistic regression on each layer's features averaged over positions, "
        f"{r['train_images']:,} training / {r['test_images']:,} test images: "
        + ", ".join(f"layer {l}: {a:.1%}" for l, a in zip(layers, acc))
        + f"; on the raw 14x14 pixels {r['pixels_accuracy']:.1%}, the majority class {r['majority_class_accuracy']:.1%}",
        verdict(layers[0] < best < layers[-1]) + f": the best probe is layer {best} of {layers[-1]}"
        + (f", but the raw pixels ({r['pixels_accuracy']:.1%}) beat every layer at this scale"
           if r["pixels_accuracy"] > max(acc) else ""),
        ["igpt/probe.png", "igpt/completions.png"])]


def main() -> None:
    sections = [("vit-vs-cnn", vit_vs_cnn, "python reports/vit_vs_cnn.py"),
                ("attention-vs-rnn", attention_vs_rnn, "python reports/attention_vs_rnn.py"),
                ("heads", heads, "python reports/heads.py"),
                ("detr-vs-deformable", detr_vs_deformable, "python reports/detr_vs_deformable.py"),
                ("igpt", igpt_probe, "qkv probe runs/igpt-fashion-mnist --out reports/igpt")]
    lines = ["# The seeds' claims, measured", "",
             "Written by `python reports/claims.py` from each experiment's `results.json`; every figure below "
             "was produced by the command named with it, on a 2-core CPU. A claim is marked held or not by the "
             "test written for it in reports/claims.py.", "",
             "| claim | held here? |", "|---|---|"]
    body = []
    for name, summarise, command in sections:
        r = read(name)
        if r is None:
            body += [f"## Not run: `{command}`", ""]
            continue
        for claim, evidence, held, figures in summarise(r):
            lines.append(f"| {claim.split(' (')[0]} | {held.split(':')[0]} |")
            body += [f"## {claim}", "", f"Command: `{command}`", "", evidence, "", f"Verdict: {held}.", ""]
            body += [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    atomic_write_text(HERE / "claims.md", "\n".join(lines + [""] + body))
    print(HERE / "claims.md")


if __name__ == "__main__":
    main()
