"""The ``qkv`` command."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .device import resolve_device
from .errors import ConfigError, QkvError


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())

EPILOG = """examples:
  qkv data get shakespeare
  qkv train configs/gpt-shakespeare-char.toml --set train.max_steps=200
  qkv generate runs/gpt-shakespeare-char --prompt "ROMEO:" --max-new-tokens 300 \\
      --temperature 0.8 --top-k 40 --seed 1
  qkv plot runs/gpt-shakespeare-char runs/gpt-shakespeare-bpe
  qkv classify runs/vit-fashion-mnist shirt.png boot.png
  qkv translate runs/transformer-bible-en-de "In the beginning God created the heavens and the earth." --beam 4
  qkv evaluate runs/transformer-bible-en-de --split test --beam 4
"""


def cmd_data(args) -> int:
    from . import data

    if args.action == "list":
        width = max(map(len, data.DATASETS))
        for name, module in sorted(data.DATASETS.items()):
            print(f"{name:{width}s}  {module.__doc__.strip().splitlines()[0]}")
        return 0
    options = {k: getattr(args, k) for k in ("src", "tgt") if getattr(args, k) is not None}
    data.get(args.name, root=args.data_dir, source=args.source, **options)
    return 0


def torchrun_command(args) -> list[str]:
    """``qkv train ... --nproc N`` as the torchrun command that starts N ranks on this machine."""
    own = ["train", args.config, *(a for kv in args.set or [] for a in ("--set", kv)),
           *(["--resume"] if args.resume else []), *(["--no-progress"] if args.no_progress else [])]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={args.nproc}", "-m", "qkv", *own]


def cmd_train(args) -> int:
    import os
    import subprocess

    from .train import train

    if args.nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc > 1:
        if "WORLD_SIZE" in os.environ:
            raise ValueError("--nproc under torchrun: torchrun already started the processes; drop --nproc")
        return subprocess.call(torchrun_command(args))
    run_dir = train(args.config, args.set or [], resume=args.resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"done: {run_dir}")
    return 0


def cmd_generate(args) -> int:
    import torch

    from . import load
    from .inference import stream
    from .inference.generate import check_sampling
    from .tokenizers import StreamDecoder

    check_sampling(args.temperature, args.top_k, args.top_p)
    if args.max_new_tokens < 0:
        raise ConfigError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    model, tokenizer = load(args.run_dir, device=resolve_device(args.device))
    if not hasattr(model, "generate"):
        raise ValueError(f"{args.run_dir} holds a {model.model_type!r} model, not a language model; "
                         "for translation use `qkv translate`")
    if tokenizer is None:
        raise ValueError(f"{args.run_dir} has no tokenizer file; qkv generate needs one to read the prompt")
    prompt = args.prompt.encode().decode("unicode_escape") if args.escapes else args.prompt
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty; give --prompt some text (e.g. --prompt $'\\n')")
    eos = None if args.ignore_eos else tokenizer.eos_token_id
    decoder = StreamDecoder(tokenizer)
    sys.stdout.write(prompt)
    for token in stream(model, torch.tensor([ids]), args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k, top_p=args.top_p, eos_token_id=eos, seed=args.seed,
                        compile=args.compile):
        sys.stdout.write(decoder.push(int(token[0])))
        sys.stdout.flush()
    sys.stdout.write(decoder.flush() + "\n")
    return 0


def task_options(run_dir: str, rest: list[str], parser: argparse.ArgumentParser) -> dict:
    """The options of ``qkv evaluate`` that belong to the run's task (``Task.options``):
    parsed from what the common options left; one the task does not declare is a usage error."""
    from .tasks import task_class
    from .train.config import read_run

    task = task_class(read_run(run_dir).task)
    own = argparse.ArgumentParser(prog=f"{parser.prog} ({task.name} run)", add_help=False)
    for o in task.options:
        own.add_argument(o.flag, dest=o.name, type=o.type, default=o.default, help=o.help)
    values, unknown = own.parse_known_args(rest)
    if unknown:
        takes = ", ".join(o.flag for o in task.options) or "no options of its own"
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (a {task.name} run's evaluate takes {takes})")
    return vars(values)


def cmd_evaluate(args) -> int:
    from .train.run import evaluate_run

    options = task_options(args.run_dir, args.task_options, args.parser)
    results = evaluate_run(args.run_dir, args.split, args.out, **options)
    width = max(map(len, results))
    for name, value in results.items():
        print(f"{name:{width}s}  {value:.4f}" if isinstance(value, float) else f"{name:{width}s}  {value}")
    return 0


def cmd_export(args) -> int:

    from . import load, save_model

    model, tokenizer = load(args.run_dir)
    out = Path(args.out or Path(args.run_dir) / "export")
    save_model(model, out)
    if tokenizer is not None:
        tokenizer.save(out)
    print(out / "model.safetensors")
    return 0


def cmd_classify(args) -> int:
    from . import load
    from .inference import classify

    if args.top < 1:
        raise ConfigError(f"--top must be at least 1, got {args.top}")
    model, _ = load(args.run_dir, device=resolve_device(args.device))
    for path, top in zip(args.images, classify(model, args.images, args.top)):
        print(path)
        for name, p in top:
            print(f"  {p:7.2%}  {name}")
    return 0


def cmd_detect(args) -> int:
    from . import load
    from .inference.detect import detect, draw_detections

    if not 0 <= args.threshold <= 1:
        raise ConfigError(f"--threshold must be a score in [0, 1], got {args.threshold}")
    model, _ = load(args.run_dir, device=resolve_device(args.device))
    if getattr(model, "role", None) != "object_detector":
        raise ConfigError(f"{args.run_dir} holds a {model.model_type!r} model, not an object detector (DETR, ...)")
    names = model.config.label_names
    for path, (image, found) in zip(args.images, detect(model, args.images, args.threshold)):
        h, w = image.shape[:2]
        print(f"{path}: {len(found['scores'])} objects scoring >= {args.threshold}")
        for score, label, box in zip(found["scores"].tolist(), found["labels"].tolist(), found["boxes"].tolist()):
            x0, y0, x1, y1 = (round(v * s, 1) for v, s in zip(box, (w, h, w, h)))
            print(f"  {score:6.1%}  {names[label]:<12s} x0={x0} y0={y0} x1={x1} y1={y1}")
        out = Path(args.out or ".") / f"{Path(path).stem}-detections.png"
        print(f"  drawn: {draw_detections(image, found, names, out, threshold=args.threshold)}")
    return 0


def cmd_translate(args) -> int:
    from . import load
    from .inference import check_seq2seq, translate_texts

    if args.beam < 1:
        raise ConfigError(f"--beam must be at least 1, got {args.beam}")
    model, tokenizer = load(args.run_dir, device=resolve_device(args.device))
    check_seq2seq(model, args.run_dir)
    if tokenizer is None:
        raise ConfigError(f"{args.run_dir} has no tokenizer file; qkv translate needs one")
    options = dict(beam=args.beam, length_penalty=args.length_penalty, max_new_tokens=args.max_new_tokens)
    lines = args.text or sys.stdin.read().splitlines()  # empty lines give empty lines: the output aligns
    sys.stdout.write("".join(line + "\n" for line in translate_texts(model, tokenizer, lines, **options)))
    return 0


def cmd_average(args) -> int:
    from .train.average import average_checkpoints

    print(average_checkpoints(args.run_dir, args.last, args.out))
    return 0


def cmd_embed(args) -> int:

    from . import load
    from .inference.embed import embed, max_seq_length, pooling_mode, search

    model, tokenizer = load(args.model_dir)
    if getattr(tokenizer, "kind", None) != "wordpiece" or not hasattr(model, "pooled"):
        raise ValueError(f"{args.model_dir} is not a BERT model with a WordPiece tokenizer "
                         "(tokenizer.json or vocab.txt); qkv embed needs one")
    options = dict(pooling=pooling_mode(args.model_dir), max_len=max_seq_length(args.model_dir, model),
                   truncate=args.truncate)
    if args.search:
        file = Path(args.search)
        if not file.is_file():
            raise ValueError(f"--search {file}: no such file")
        corpus = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not corpus or len(args.sentences) != 1:
            raise ValueError("--search FILE needs one query sentence and a file of non-empty lines")
        q, c = embed(model, tokenizer, args.sentences, **options), embed(model, tokenizer, corpus, **options)
        for i, score in search(q[0], c, args.top):
            print(f"{score:.4f}  {corpus[i]}")
        return 0
    for sentence, vector in zip(args.sentences, embed(model, tokenizer, args.sentences, **options)):
        print(sentence)
        print(" ".join(f"{v:.6f}" for v in vector.tolist()))
    return 0


def cmd_fill_mask(args) -> int:
    from . import load
    from .inference import fill_mask

    model, tokenizer = load(args.run_dir)
    for position, candidates in fill_mask(model, tokenizer, args.text, top=args.top, warn=sys.stderr):
        print(f"[MASK] #{position}:")
        for token, p in candidates:
            print(f"  {p:.4f}  {token}")
    return 0


def cmd_complete(args) -> int:
    from .inference.complete import complete_run
    from .inference.generate import check_sampling

    check_sampling(args.temperature, args.top_k, None)
    png = complete_run(args.run_dir, args.out, split=args.split, n=args.n, image_files=args.image,
                       samples=args.samples_per_image, temperature=args.temperature, top_k=args.top_k,
                       seed=args.seed, device=resolve_device(args.device))
    print(png)
    print(png.with_suffix(".json"))
    return 0


def cmd_probe(args) -> int:
    from .analysis.probe import probe_run

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

    from .analysis import commands

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
    from .explore import serve

    serve(args.run_dir, host=args.host, port=args.port)
    return 0


def cmd_plot(args) -> int:
    from .train.plot import plot_runs

    out = args.out or (f"{args.run_dirs[0]}/plots" if len(args.run_dirs) == 1 else "plots")
    for path in plot_runs(args.run_dirs, out):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qkv", description="Train, sample and inspect Transformers.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("data", help="download and prepare real data sets",
                       description="Download and prepare a data set under the data root "
                                   "($QKV_DATA, else ~/.cache/qkv). Preparing twice is a no-op.")
    dsub = d.add_subparsers(dest="action", required=True, metavar="ACTION")
    g = dsub.add_parser("get", help="download and prepare a data set")
    g.add_argument("name", help="data set name (see `qkv data list`)")
    g.add_argument("--from", dest="source", metavar="PATH",
                   help="use a local copy (the source archive, or a folder of its files) instead of downloading")
    g.add_argument("--data-dir", metavar="DIR", help="data root (default: $QKV_DATA or ~/.cache/qkv)")
    g.add_argument("--src", metavar="CODE", help="translation corpora: source version (bible-en-de: 4 = WEB)")
    g.add_argument("--tgt", metavar="CODE", help="translation corpora: target version (bible-en-de: e = Elberfelder)")
    dsub.add_parser("list", help="list the data sets qkv knows")
    d.set_defaults(func=cmd_data)

    t = sub.add_parser("train", help="train a model from a TOML config",
                       description="Train into the config's out_dir. If that run has a checkpoint, "
                                   "training resumes from it (same data order, optimizer and RNG state).")
    t.add_argument("config", help="a TOML file, e.g. configs/gpt-shakespeare-char.toml")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=200 (repeatable)")
    t.add_argument("--resume", action="store_true", help="require a checkpoint to resume from")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train on N processes of this machine (DistributedDataParallel, through torchrun)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("generate", help="sample text from a trained language model",
                       description="Stream text from a run directory's latest checkpoint.")
    s.add_argument("run_dir", help="a run directory (or a model directory with a tokenizer)")
    s.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    s.add_argument("--escapes", action="store_true", help="interpret backslash escapes (\\n) in --prompt")
    s.add_argument("--max-new-tokens", type=int, default=300)
    s.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    s.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with this mass")
    s.add_argument("--seed", type=int, default=None, help="make sampling repeatable")
    s.add_argument("--ignore-eos", action="store_true", help="keep going past the end-of-text token")
    s.add_argument("--compile", action="store_true",
                   help="torch.compile the one-token step: seconds to compile, faster tokens after (long outputs)")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_generate)

    ev = sub.add_parser("evaluate", help="score a trained run on a split of its data",
                        description="Score a run's latest checkpoint on one split of its data set; "
                                    "the metrics depend on the task (loss and perplexity for lm). A task "
                                    "may take options of its own: a translation run takes --beam N "
                                    "(default 4), --length-penalty ALPHA (0.6) and --max-sentences N.")
    ev.add_argument("run_dir", help="a run directory written by `qkv train`")
    ev.add_argument("--split", default="test", help="which split (default: test)")
    ev.add_argument("--out", metavar="DIR", help="where files the task writes go (default: RUN_DIR/eval-SPLIT)")
    ev.set_defaults(func=cmd_evaluate, parser=ev)

    x = sub.add_parser("export", help="write a run's latest checkpoint as one model directory",
                       description="Gather the latest checkpoint of a run (whole, or sharded by FSDP "
                                   "across any number of processes) into config.json + model.safetensors "
                                   "(+ the tokenizer), which `qkv.load` and every qkv command read.")
    x.add_argument("run_dir", help="a run directory written by `qkv train`")
    x.add_argument("--out", metavar="DIR", help="where to write (default: RUN_DIR/export)")
    x.set_defaults(func=cmd_export)

    cl = sub.add_parser("classify", help="top-5 labels of image files from an image classifier",
                        description="Print each image's most likely labels with probabilities; images "
                                    "are converted and resized with Pillow as the model's config says.")
    cl.add_argument("run_dir", help="a run directory (or a model directory) of an image classifier")
    cl.add_argument("images", nargs="+", metavar="IMAGE")
    cl.add_argument("--top", type=int, default=5, help="how many labels (default: 5)")
    cl.add_argument("--device", default="cpu")
    cl.set_defaults(func=cmd_classify)

    de = sub.add_parser("detect", help="boxes, labels and scores of objects in image files (DETR, ...)",
                        description="Print each image's detections (pixel boxes) and write the image with "
                                    "them drawn as IMAGE-detections.png.")
    de.add_argument("run_dir", help="a run directory (or a model directory) of an object detector")
    de.add_argument("images", nargs="+", metavar="IMAGE")
    de.add_argument("--threshold", type=float, default=0.5, help="lowest score shown (default: 0.5)")
    de.add_argument("--out", default=None, help="folder for the drawn images (default: the current one)")
    de.add_argument("--device", default="cpu")
    de.set_defaults(func=cmd_detect)

    tr = sub.add_parser("translate", help="translate text with a trained translation model",
                        description="Translate each TEXT argument, or else each line of stdin (empty "
                                    "lines give empty lines, so the output aligns with the input).")
    tr.add_argument("run_dir", help="a translation run directory (or an averaged/model directory with a tokenizer)")
    tr.add_argument("text", nargs="*", help="sentences to translate (default: read stdin, one per line)")
    tr.add_argument("--beam", type=int, default=4, help="beam size; 1 = greedy (default 4)")
    tr.add_argument("--length-penalty", type=float, default=0.6, help="alpha of ((5+len)/6)^alpha (default 0.6)")
    tr.add_argument("--max-new-tokens", type=int, default=None, help="default: 2 * source tokens + 10")
    tr.add_argument("--device", default="cpu")
    tr.set_defaults(func=cmd_translate)

    av = sub.add_parser("average", help="average the weights of a run's last N checkpoints",
                        description="Write the mean weights of the newest N checkpoints (with the run's "
                                    "config and tokenizer) to a directory qkv translate/evaluate read.")
    av.add_argument("run_dir")
    av.add_argument("--last", type=int, default=5, help="how many checkpoints (default 5)")
    av.add_argument("--out", metavar="DIR", help="default: RUN_DIR/averaged-last-N")
    av.set_defaults(func=cmd_average)

    em = sub.add_parser("embed", help="sentence embeddings from a BERT (e.g. all-MiniLM-L6-v2)",
                        description="Print mean-pooled, unit-length sentence embeddings (as "
                                    "sentence-transformers computes them), or with --search rank the "
                                    "lines of a file by cosine similarity to one query sentence.")
    em.add_argument("model_dir", help="a BERT model folder, e.g. $QKV_DATA/all-minilm-l6-v2")
    em.add_argument("sentences", nargs="+", metavar="SENTENCE")
    em.add_argument("--search", metavar="FILE", help="rank this file's lines (one sentence each) against the query")
    em.add_argument("--top", type=int, default=5, help="how many matches --search prints (default 5)")
    em.add_argument("--truncate", action="store_true",
                    help="cut sentences longer than the model's limit instead of refusing them")
    em.set_defaults(func=cmd_embed)

    fm = sub.add_parser("fill-mask", help="top predictions of a masked-LM BERT for each [MASK]",
                        description="Print the most likely tokens, with probabilities, for each "
                                    "[MASK] in the text.")
    fm.add_argument("run_dir", help="a run directory or BERT model folder with an MLM head and tokenizer")
    fm.add_argument("text", help='text with one or more [MASK], e.g. "To be or not to [MASK]."')
    fm.add_argument("--top", type=int, default=5, help="candidates per [MASK] (default 5)")
    fm.set_defaults(func=cmd_fill_mask)

    co = sub.add_parser("complete", help="an image GPT completes the bottom halves of images",
                        description="Give an image_lm run the top half of each image and sample the "
                                    "bottom half pixel by pixel; draws originals, given halves and "
                                    "completions as a PNG grid (with the pixels as JSON beside it).")
    co.add_argument("run_dir", help="an image_lm run directory (or an image GPT model directory, with --image)")
    co.add_argument("--split", default="test", help="which split of the run's data (default: test)")
    co.add_argument("--n", type=int, default=8, help="how many images of the split (default 8)")
    co.add_argument("--image", nargs="+", metavar="FILE",
                    help="complete these image files instead (square, at least the model's size)")
    co.add_argument("--samples-per-image", type=int, default=3, help="completions of each image (default 3)")
    co.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    co.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely grey levels")
    co.add_argument("--seed", type=int, default=None, help="make sampling repeatable")
    co.add_argument("--out", metavar="FILE", help="the PNG to write (default: RUN_DIR/complete-SPLIT.png)")
    co.add_argument("--device", default="cpu")
    co.set_defaults(func=cmd_complete)

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

    pl = sub.add_parser("plot", help="draw training curves of one or more runs (PNG)",
                        description="Draw loss (validation dashed), learning rate and throughput "
                                    "from each run's metrics.jsonl; several runs share each figure.")
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    pl.add_argument("--out", metavar="DIR",
                    help="where the PNGs go (default: RUN_DIR/plots for one run, ./plots for several)")
    pl.set_defaults(func=cmd_plot)

    xp = sub.add_parser("explore", help="look inside a run's attention in the browser (a local web page)",
                        description="Serve one page on this machine: type a sentence (GPT, BERT), a source "
                                    "sentence (translation) or upload an image (ViT, Swin), pick a layer and "
                                    "a head, hover a token. Loads the model once; reads nothing else.")
    xp.add_argument("run_dir", help="a run directory or model directory")
    xp.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    xp.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this machine only)")
    xp.set_defaults(func=cmd_explore)
    return p


def main(argv: list[str] | None = None) -> int:
    from .train import TrainingInterrupted
    from .train.distributed import DistributedFailure

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "evaluate":  # evaluate's own depend on the run's task
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.task_options = extra
    try:
        return args.func(args)
    except TrainingInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    except DistributedFailure as e:
        print(f"qkv {args.command}: {e}. The job stops; its last complete checkpoint stands: "
              "run the same command again to resume.", file=sys.stderr)
        return 1
    except (QkvError, ValueError) as e:  # bad input: one line that says what to do
        print(f"qkv {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
