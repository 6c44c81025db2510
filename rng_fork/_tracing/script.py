"""``python -m rng_fork trace``: run a script or module as ``__main__`` under :func:`rng_fork.trace`.

The script sees the ``sys.argv`` and ``sys.path[0]`` that ``python SCRIPT`` or
``python -m MODULE`` would give it. The report goes to stderr when it ends, also
on an exception or ``SystemExit``, which then propagate unchanged: the exit
status is the script's.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from collections.abc import Sequence

USAGE = "python -m rng_fork trace [--json PATH] (SCRIPT | -m MODULE) [ARGS...]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``trace`` (they come before the script; everything after it is the script's)."""
    parser.add_argument("--json", metavar="PATH", help="also write every event and the summary to PATH as JSON")
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run a module as `python -m MODULE` does")
    parser.add_argument("script", nargs="?", metavar="SCRIPT", help="the script to run as __main__")
    parser.add_argument("args", nargs="*", metavar="ARGS", help="the script's own arguments")


def split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``trace``'s own options, and the script (or ``-m MODULE``) with its arguments."""
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            return argv[:i], argv[i:]
        if arg == "--json":
            i += 2
        elif arg.startswith("--json=") or arg in ("-h", "--help"):
            i += 1
        elif arg == "--":
            return argv[:i], argv[i + 1:]
        else:
            return argv[:i], argv[i:]
    return argv, []


def run(json_path: str | None, target: list[str]) -> int:
    """Run ``target`` (``[SCRIPT, *ARGS]`` or ``["-m", MODULE, *ARGS]``) traced; print the report at its end."""
    from ..trace import trace

    if not target or (target[0] == "-m" and len(target) < 2):
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    module = target[1] if target[0] == "-m" else None
    args = target[2:] if module is not None else target[1:]
    script = None if module is not None else target[0]
    if script is not None and not os.path.exists(script):
        print(f"python -m rng_fork trace: can't open file {script!r}: no such file", file=sys.stderr)
        return 2
    tracer = trace()
    if script is not None:
        sys.argv = [script, *args]
        sys.path[0] = os.path.dirname(os.path.abspath(script))
    else:
        sys.argv = [module or "", *args]  # run_module puts the module's file name first, as python -m does
        sys.path[0] = os.getcwd()
    try:
        with tracer:
            if module is not None:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(script or "", run_name="__main__")
    finally:
        sys.stdout.flush()  # the script's output first, then the report
        print(tracer.report(), file=sys.stderr)
        if json_path is not None:
            tracer.write_json(json_path)
            print(f"rng_fork.trace: events written to {json_path}", file=sys.stderr)
    return 0
