"""Instructions per execution, counted by valgrind's callgrind: stable where wall-clock time is not.

One child process under ``valgrind --tool=callgrind`` builds the rows asked
for and runs, for each, ``N`` executions of its statement and then ``N``
executions of an empty statement, both through ``timeit`` (the same loop), each
inside ``sys.call_tracing``. Callgrind zeroes its counters on entry to
``_PyEval_CallTracing`` (the C function behind ``sys.call_tracing``, which
nothing else calls) and writes a dump on exit, so each dump holds exactly one
loop (the first dump, of a loop run once before the rows, is discarded); a
row's figure is ``(statement loop - empty loop) / N``.

The child starts with instrumentation off (importing torch runs at a few times
native speed instead of ~50 times) and switches it on with
``callgrind_control`` once its rows are built; where that cannot reach it, the
run is repeated with instrumentation on from the start. ``PYTHONHASHSEED=0``
keeps the counts the same from run to run.

The child is ``python -m benchmarks.callgrind KEY=N ...``.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Sequence
from pathlib import Path

from .rows import Row, cpu_rows

ROOT = Path(__file__).resolve().parent.parent
DELIMITER = "_PyEval_CallTracing"
CONTROL_FAILED = 3
"""The child's exit status when callgrind_control could not switch instrumentation on."""
WARMUP_EXECUTIONS = 10


class CallgrindError(RuntimeError):
    """The instruction count could not be taken; the message says why."""


def valgrind() -> str | None:
    return shutil.which("valgrind")


def executions(callgrind_n: int, *, quick: bool) -> int:
    return max(5, callgrind_n // 10) if quick else callgrind_n


def count(rows: Sequence[Row], *, quick: bool, timeout_s: float = 3600) -> None:
    """Set ``instructions`` on every measurable row, from one callgrind child."""
    live = [row for row in rows if row.ok]
    tool = valgrind()
    if tool is None:
        raise CallgrindError("--instructions needs valgrind (its callgrind tool); valgrind is not on PATH")
    specs = [(row, executions(row.callgrind_n, quick=quick)) for row in live]
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="rng_fork-callgrind-") as out:
        for switch_on in (True, False):
            command = [
                tool, "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p",
                f"--instr-atstart={'no' if switch_on else 'yes'}",
                f"--zero-before={DELIMITER}", f"--dump-after={DELIMITER}",
                sys.executable, "-m", "benchmarks.callgrind", *(["--switch-on"] if switch_on else []),
                *(f"{row.key}={n}" for row, n in specs),
            ]
            try:
                proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise CallgrindError(f"the callgrind run took more than {timeout_s:g} s") from None
            if proc.returncode != CONTROL_FAILED:
                break
            for leftover in Path(out).iterdir():
                leftover.unlink()
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise CallgrindError(f"the callgrind run failed (exit {proc.returncode}):\n{tail}")
        totals = dumped_totals(Path(out))
    if len(totals) != 1 + 2 * len(specs):
        raise CallgrindError(
            f"callgrind wrote {len(totals)} dumps for {len(specs)} rows (want one, then two a row): this "
            f"Python's {DELIMITER} is not visible to valgrind (a stripped or static build?)"
        )
    for i, (row, n) in enumerate(specs):
        row.instructions = (totals[2 + 2 * i] - totals[1 + 2 * i]) / n


def dumped_totals(folder: Path) -> list[int]:
    """The instruction totals of the dumps taken on leaving the delimiter, in the order they were taken."""
    found: list[tuple[int, int]] = []
    for path in folder.iterdir():
        text = path.read_text(encoding="utf-8", errors="replace")
        if f"Trigger: --dump-after={DELIMITER}" not in text:
            continue
        part = re.search(r"^part: (\d+)$", text, re.MULTILINE)
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
        if part is None or total is None:
            raise CallgrindError(f"unreadable callgrind dump {path.name}")
        found.append((int(part.group(1)), int(total.group(1))))
    return [total for _, total in sorted(found)]


def child(argv: Sequence[str]) -> int:
    """Under callgrind: build the rows named ``KEY=N`` and run each loop inside ``sys.call_tracing``."""
    import numpy as np
    import torch

    switch_on = "--switch-on" in argv
    wanted = dict(spec.rsplit("=", 1) for spec in argv if spec != "--switch-on")
    torch.set_num_threads(1)  # as the wall-clock run; and callgrind runs one thread at a time anyway
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    built = {row.key: row for row in cpu_rows(lambda key: key in wanted)[0]}
    unknown = sorted(set(wanted) - set(built))
    if unknown:
        print(f"no such rows: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if switch_on:
        try:
            control = subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())], capture_output=True,
                                     text=True, check=False)
        except OSError:  # no callgrind_control on PATH
            return CONTROL_FAILED
        if control.returncode != 0 or "OK" not in control.stdout:
            return CONTROL_FAILED
    empty = timeit.Timer("pass")
    # A first, discarded loop: with instrumentation on from the start, the first dump also holds
    # part of what ran before it.
    sys.call_tracing(empty.timeit, (1,))
    for key, n in wanted.items():
        row = built[key]
        timer = timeit.Timer(row.stmt, globals=row.namespace)
        with row.around():
            timer.timeit(WARMUP_EXECUTIONS)
            sys.call_tracing(empty.timeit, (int(n),))
            sys.call_tracing(timer.timeit, (int(n),))
    return 0


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))
