"""``python -m rng_fork``: the command line; ``demo`` is its one command.

Example::

    $ python -m rng_fork demo --epochs 5 --workers 2 --plot demo.png
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import demo


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return demo.run(args)


if __name__ == "__main__":
    sys.exit(main())
