"""Commands that look inside a model: linear probes, the measures of ``qkv analyze``, the browser explorer."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..device import resolve_device


def cmd_probe(args) -> int:
    from ..analysis.probe import probe_run

    result = probe_run(args.run_dir, args.out, train_count=args.train_count, test_count=args.test_count,
                       device=resolve_device(args.device))
    print(f"linear probe, {result['train_images']} train / {result['test_images']} test images:")
    print("layer  test accuracy")
    for layer, acc in zip(result["layers"], result["accuracy"]):
        print(f"{layer:5d}  {acc:.4f}" + ("  (best)" if layer == result["best_layer"] else ""))
    print(f"raw pixels: {result['pixels_accuracy']:.4f}, majority class: {result['majority_class_accuracy']:.4f}")
    print(result["png"])
    print(result["json"])
    return 0


MEASURES = {  # what `qkv analyze` measures -> (positional words after it, options it takes)
    "attention": ((), ("text", "src", "tgt", "layer", "head", "kind")),
    "rollout": (("IMAGE",), ("head_fusion", "discard_ratio")),
    "positions": ((), ()),
    "bias": ((), ()),
    "distance": ((), ("split", "count")),
    "cka": (("RUN_B",), ("split", "count")),
    "queries": (("IMAGE",), ("threshold",)),
}
ANALYZE_OPTIONS = sorted({name for _, takes in MEASURES.values() for name in takes})


def cmd_analyze(args) -> int:

    from ..analysis import commands

    words = list(args.words)
    if words and words[0] == "cka":  # qkv analyze cka RUN_A RUN_B
        words = [words[1] if len(words) > 1 else "", "cka", *words[2:]]
    if len(words) < 2 or words[1] not in MEASURES:
        args.parser.error(f"say what to measure: RUN_DIR {{{','.join(m for m in MEASURES if m != 'cka')}}} "
                          "or cka RUN_A RUN_B")
    run_dir, measure, rest = words[0], words[1], words[2:]
    needs, takes = MEASURES[measure]
    if len(rest) != len(needs):
        args.parser.error(f"{measure} takes {' '.join(needs) or 'no more words'}, got {' '.join(rest) or 'none'}")
    given = [k for k in ANALYZE_OPTIONS if getattr(args, k) != args.parser.get_default(k) and k not in takes]
    if given:
        args.parser.error(f"{measure} does not take {', '.join('--' + g.replace('_', '-') for g in given)}")
    out = Path(args.out or Path(run_dir) / "analysis")
    count = {} if args.count is None else {"count": args.count}
    if measure == "attention":
        png = commands.attention(run_dir, out, text=args.text, src=args.src, tgt=args.tgt, layer=args.layer,
                                 head=args.head, kind=args.kind)
    elif measure == "rollout":
        png = commands.rollout(run_dir, rest[0], out, head_fusion=args.head_fusion, discard_ratio=args.discard_ratio)
    elif measure == "positions":
        png = commands.positions(run_dir, out)
    elif measure == "bias":
        png = commands.bias(run_dir, out)
    elif measure == "distance":
        png = commands.distance(run_dir, args.split, out, **count)
    elif measure == "queries":
        png = commands.queries(run_dir, rest[0], out, threshold=args.threshold)
    else:
        png = commands.cka(run_dir, rest[0], args.split, out, **count)
    print(png)
    print(png.with_suffix(".json"))
    return 0


def cmd_explore(args) -> int:
    from ..explore import serve

    serve(args.run_dir, host=args.host, port=args.port)
    return 0


def add_parsers(sub) -> None:
    """The subcommands of this module, each with its handler as ``func``."""
    pr = sub.add_parser("probe", help="linear-probe accuracy of each layer of an image GPT",
                        description="Average each layer's features over the pixels of labelled images, fit "
                                    "a logistic regression per layer on the training split and print its "
                                    "test accuracy; writes probe.png (accuracy against layer) and probe.json.")
    pr.add_argument("run_dir", help="an image_lm run directory")
    pr.add_argument("--train-count", type=int, default=10000, help="training images to fit on (default 10000)")
    pr.add_argument("--test-count", type=int, default=2000, help="test images to score (default 2000)")
    pr.add_argument("--out", metavar="DIR", help="where probe.png and probe.json go (default: RUN_DIR/probe)")
    pr.add_argument("--device", default="cpu")
    pr.set_defaults(func=cmd_probe)

    an = sub.add_parser(
        "analyze", help="look inside a trained model: attention, rollout, positions, distance, CKA, queries",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure what a run's model does and draw it: a PNG and its numbers as JSON, under "
                    "RUN_DIR/analysis (or --out).",
        epilog="""measures:
  qkv analyze RUN_DIR attention --text "..." [--layer L --head H]   token x token maps, a grid of heads
  qkv analyze RUN_DIR attention --src "..." [--tgt "..."] [--kind cross|encoder|decoder]
                                                 a translation run: the cross-attention alignment
  qkv analyze RUN_DIR rollout IMAGE.png          attention rollout of an image model, over the image
  qkv analyze RUN_DIR positions                  cosine similarity of a ViT's position embeddings
  qkv analyze RUN_DIR bias                       each Swin head's relative position bias over (dy, dx)
  qkv analyze RUN_DIR distance --split val       mean attention distance per head against depth
  qkv analyze cka RUN_A RUN_B --split val        layer x layer CKA of two models on the same inputs
  qkv analyze RUN_DIR queries IMAGE.png          a detector: what each detected object's query looked at""")
    an.add_argument("words", nargs="+", metavar="RUN_DIR MEASURE [ARG]")
    an.add_argument("--text", help="attention: the text to read")
    an.add_argument("--src", help="attention, translation run: the source sentence")
    an.add_argument("--tgt", help="attention, translation run: the target (default: its greedy translation)")
    an.add_argument("--kind", choices=("cross", "encoder", "decoder"), default="cross",
                    help="attention, translation run: which attention (default: cross)")
    an.add_argument("--layer", type=int, default=-1, help="attention: which layer (default: the last)")
    an.add_argument("--head", type=int, help="attention: one head (default: all)")
    an.add_argument("--head-fusion", choices=("mean", "max", "min"), default="mean", help="rollout: how heads are fused")
    an.add_argument("--discard-ratio", type=float, default=0.0, help="rollout: drop this fraction of the weakest weights")
    an.add_argument("--split", default="val", help="distance, cka: the split whose inputs are used (default: val)")
    an.add_argument("--count", type=int, help="distance, cka: how many examples (default 256 / 512)")
    an.add_argument("--threshold", type=float, default=0.5, help="queries: lowest score of a detection shown")
    an.add_argument("--out", metavar="DIR", help="where the PNG and JSON go (default: RUN_DIR/analysis)")
    an.set_defaults(func=cmd_analyze, parser=an)

    xp = sub.add_parser("explore", help="look inside a run's attention in the browser (a local web page)",
                        description="Serve one page on this machine: type a sentence (GPT, BERT), a source "
                                    "sentence (translation) or upload an image (ViT, Swin), pick a layer and "
                                    "a head, hover a token. Loads the model once; reads nothing else.")
    xp.add_argument("run_dir", help="a run directory or model directory")
    xp.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    xp.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this machine only)")
    xp.set_defaults(func=cmd_explore)
