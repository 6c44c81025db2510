"""``python -m rng_fork``: the command line: ``demo`` and ``trace``.

Example::

    $ python -m rng_fork demo --epochs 5 --workers 2 --plot demo.png
    $ python -m rng_fork trace train.py --lr 0.1        # which lines drew from which generator
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import demo
from ._tracing import script


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m rng_fork``, with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="python -m rng_fork",
        description="rng_fork: run evaluation and other code without changing what training draws.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo_parser = commands.add_parser(
        "demo",
        help="train a small model three times and show that evaluating inside fork_rng() changes nothing",
        description=(demo.__doc__ or "").split("\n\n")[0].replace("``", ""),
    )
    demo.add_arguments(demo_parser)
    trace_parser = commands.add_parser(
        "trace",
        help="run a script (or -m MODULE) as __main__ and report which lines drew from which generator",
        description="Run SCRIPT (or -m MODULE) as __main__ under rng_fork.trace(); print, at its end, which "
        "lines drew from which generator. The exit status is the script's.",
        usage=script.USAGE,
    )
    script.add_arguments(trace_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "trace":
        # Everything from the script on is the script's own, options included.
        own, target = script.split(argv[1:])
        args = parser.parse_args(["trace", *own])
        return script.run(args.json, target)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return demo.run(args)


if __name__ == "__main__":
    sys.exit(main())
