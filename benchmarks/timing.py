"""Wall-clock timing: every row side by side, in interleaved rounds of ``timeit.Timer`` runs.

Each row gets one ``timeit.Timer``. ``autorange`` (or, in a quick run, ten
executions) sizes a round to about ``round_s``; then rounds go round-robin over
every row, each starting one row further, so a slow spell of a busy machine
hits every row alike and no row always follows the same one. ``timeit`` turns
the garbage collector off while it times; a row's ``around`` context is entered
and left outside the timing.
"""

from __future__ import annotations

import gc
import time
import timeit
from collections.abc import Sequence

from .rows import Row

WARMUP_EXECUTIONS = 3


def calibrate(row: Row, timer: timeit.Timer, round_s: float, *, quick: bool) -> None:
    """Set ``row.n``, the executions per round, so that a round takes about ``round_s``."""
    with row.around():
        timer.timeit(WARMUP_EXECUTIONS)
        number, seconds = (10, timer.timeit(10)) if quick else timer.autorange()
    row.n = max(1, round(number * round_s / max(seconds, 1e-9)))


def measure(rows: Sequence[Row], *, rounds: int, round_s: float, warmup_rounds: int, quick: bool) -> float:
    """Time every measurable row for ``rounds`` interleaved rounds; returns the seconds it took."""
    started = time.perf_counter()
    live = [row for row in rows if row.ok]
    if not live:
        return 0.0
    timers = {row.key: timeit.Timer(row.stmt, globals=row.namespace) for row in live}
    for row in live:
        calibrate(row, timers[row.key], round_s, quick=quick)
    for r in range(warmup_rounds + rounds):
        start = r % len(live)
        for row in [*live[start:], *live[:start]]:
            with row.around():
                seconds = timers[row.key].timeit(row.n)
            if r >= warmup_rounds:
                row.samples.append(seconds / row.n * 1e6)
        if r % 50 == 49:
            gc.collect()  # between rounds: keeps memory flat without a collection inside a round
    return time.perf_counter() - started
