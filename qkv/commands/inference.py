"""Commands that use a trained model: generate, classify, detect, translate, embed, fill masks, complete images."""
from __future__ import annotations

import sys
from pathlib import Path

from ..device import resolve_device
from ..errors import ConfigError


def cmd_generate(args) -> int:
    import torch

    from .. import load
    from ..inference import stream
    from ..inference.generate import check_sampling
    from ..tokenizers import StreamDecoder

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


def cmd_classify(args) -> int:
    from .. import load
    from ..inference import classify

    if args.top < 1:
        raise ConfigError(f"--top must be at least 1, got {args.top}")
    model, _ = load(args.run_dir, device=resolve_device(args.device))
    for path, top in zip(args.images, classify(model, args.images, args.top)):
        print(path)
        for name, p in top:
            print(f"  {p:7.2%}  {name}")
    return 0


def cmd_detect(args) -> int:
    from .. import load
    from ..inference.detect import detect, draw_detections

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
    from .. import load
    from ..inference import check_seq2seq, translate_texts

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


def cmd_embed(args) -> int:

    from .. import load
    from ..inference.embed import embed, max_seq_length, pooling_mode, search

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
    from .. import load
    from ..inference import fill_mask

    model, tokenizer = load(args.run_dir)
    for position, candidates in fill_mask(model, tokenizer, args.text, top=args.top, warn=sys.stderr):
        print(f"[MASK] #{position}:")
        for token, p in candidates:
            print(f"  {p:.4f}  {token}")
    return 0


def cmd_complete(args) -> int:
    from ..inference.complete import complete_run
    from ..inference.generate import check_sampling

    check_sampling(args.temperature, args.top_k, None)
    png = complete_run(args.run_dir, args.out, split=args.split, n=args.n, image_files=args.image,
                       samples=args.samples_per_image, temperature=args.temperature, top_k=args.top_k,
                       seed=args.seed, device=resolve_device(args.device))
    print(png)
    print(png.with_suffix(".json"))
    return 0


def add_parsers(sub) -> None:
    """The subcommands of this module, each with its handler as ``func``."""
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
