"""Commands about runs: get data, train, evaluate, export, average checkpoints, plot curves."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_data(args) -> int:
    from .. import data

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

    from ..train import train

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


def task_options(run_dir: str, rest: list[str], parser: argparse.ArgumentParser) -> dict:
    """The options of ``qkv evaluate`` that belong to the run's task (``Task.options``):
    parsed from what the common options left; one the task does not declare is a usage error."""
    from ..tasks import task_class
    from ..train.config import read_run

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
    from ..train.run import evaluate_run

    options = task_options(args.run_dir, args.task_options, args.parser)
    results = evaluate_run(args.run_dir, args.split, args.out, **options)
    width = max(map(len, results))
    for name, value in results.items():
        print(f"{name:{width}s}  {value:.4f}" if isinstance(value, float) else f"{name:{width}s}  {value}")
    return 0


def cmd_export(args) -> int:

    from .. import load, save_model

    model, tokenizer = load(args.run_dir)
    out = Path(args.out or Path(args.run_dir) / "export")
    save_model(model, out)
    if tokenizer is not None:
        tokenizer.save(out)
    print(out / "model.safetensors")
    return 0


def cmd_average(args) -> int:
    from ..train.average import average_checkpoints

    print(average_checkpoints(args.run_dir, args.last, args.out))
    return 0


def cmd_plot(args) -> int:
    from ..train.plot import plot_runs

    out = args.out or (f"{args.run_dirs[0]}/plots" if len(args.run_dirs) == 1 else "plots")
    for path in plot_runs(args.run_dirs, out):
        print(path)
    return 0


def add_parsers(sub) -> None:
    """The subcommands of this module, each with its handler as ``func``."""
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

    av = sub.add_parser("average", help="average the weights of a run's last N checkpoints",
                        description="Write the mean weights of the newest N checkpoints (with the run's "
                                    "config and tokenizer) to a directory qkv translate/evaluate read.")
    av.add_argument("run_dir")
    av.add_argument("--last", type=int, default=5, help="how many checkpoints (default 5)")
    av.add_argument("--out", metavar="DIR", help="default: RUN_DIR/averaged-last-N")
    av.set_defaults(func=cmd_average)

    pl = sub.add_parser("plot", help="draw training curves of one or more runs (PNG)",
                        description="Draw loss (validation dashed), learning rate and throughput "
                                    "from each run's metrics.jsonl; several runs share each figure.")
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    pl.add_argument("--out", metavar="DIR",
                    help="where the PNGs go (default: RUN_DIR/plots for one run, ./plots for several)")
    pl.set_defaults(func=cmd_plot)
