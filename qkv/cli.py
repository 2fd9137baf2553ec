"""The ``qkv`` command: parses, dispatches to the handlers in ``qkv.commands``, and turns
bad input into one line on stderr (exit 2)."""
from __future__ import annotations

import argparse
import sys

from .commands import analysis, inference, runs
from .errors import QkvError


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qkv", description="Train, sample and inspect Transformers.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for commands in (runs, inference, analysis):
        commands.add_parsers(sub)
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
