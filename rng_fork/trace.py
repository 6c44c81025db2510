"""``rng_fork.trace()``: say where code consumed randomness, not only that it did."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ._swap import ThreadStack
from .sources import generator_objects, generator_sources

KINDS = ("draw", "reseed", "unattributed")


@dataclass(frozen=True)
class RngEvent:
    """One consumption or change of a generator, in program order.

    - ``source``: ``"python"``, ``"numpy"``, ``"torch"``, ``"cuda:0"``, ... or
      ``"generator:N"`` for the N-th object of ``trace(generators=[...])``.
    - ``kind``: ``"draw"``, ``"reseed"`` (a seed or a state put in) or
      ``"unattributed"`` (the state changed and no hook saw the call: a draw
      from C, another thread, NumPy on Python 3.11, a CUDA graph replay).
    - ``op``: what drew: a torch op (``"bernoulli_"``, ``"random_"``), a
      generator method (``"random"``, ``"rand"``, ``"manual_seed"``) or the
      rng_fork call that put states back (``"fork_rng.__exit__"``); empty for
      ``unattributed``.
    - ``filename``, ``lineno``, ``function``: the innermost frame outside torch,
      NumPy, the standard library and rng_fork: the line you wrote.
    - ``stack``: ``"file:line in function"`` from that frame down to the op (a few).
    - ``after``: for ``unattributed``, the site of the event before it (or of the
      trace's start): the change happened between ``after`` and this site.

    Example::

        with rng_fork.trace() as tr:
            torch.rand(2)
        tr.events[0].source, tr.events[0].op     # ('torch', 'rand')
    """

    source: str
    kind: str
    op: str
    filename: str
    lineno: int
    function: str
    stack: tuple[str, ...] = ()
    after: str | None = None

    @property
    def where(self) -> str:
        """``"file:line in function"``."""
        return f"{self.filename}:{self.lineno} in {self.function}"


@dataclass(frozen=True)
class RngSummaryRow:
    """Events grouped by (source, kind, op, filename, lineno), with how many there were.

    Example::

        top = tr.summary()[0]
        print(f"{top.count} x {top.op} from {top.source} at {top.filename}:{top.lineno}")
    """

    source: str
    kind: str
    op: str
    filename: str
    lineno: int
    function: str
    count: int


class trace:  # noqa: N801 - used like a function, as contextlib's helpers are
    """Record where the block consumes randomness; it changes no draw and no generator state.

    Every torch op that draws from a default generator (CPU and every
    initialized device) or from an object in ``generators``, every call of
    Python's global ``random`` and NumPy's legacy global generator (also through
    names imported before), and every reseed becomes an :class:`RngEvent` in
    ``events``, at the line you wrote. If a generator's state changed and no
    hook saw why, an ``"unattributed"`` event names it: every change is named.

    It never initializes CUDA, removes its hooks on every exit, nests in
    ``fork_rng``, ``RngStream`` and itself, leaves ``torch.compile`` compiling,
    and passes every event on to a profiler installed before it (cProfile).

    Example::

        with rng_fork.trace() as tr:
            for batch in loader:
                ...
        print(tr.report())          # per source: how often each line drew, and what
        tr.events                   # the RngEvent list, in program order
    """

    def __init__(self, *, generators: Iterable[object] = ()) -> None:
        # A NumPy Generator is watched through its bit generator; calls of its own methods name that.
        aliases = _numpy_generator_aliases(generators) if isinstance(generators, (list, tuple)) else []
        self._generators = generator_objects(generators)
        self._extra = generator_sources(self._generators)
        self._aliases = aliases
        self._open: ThreadStack[Any] = ThreadStack()  # the recorders open, per thread
        self.events: list[RngEvent] = []
        self.failure: BaseException | None = None
        """An error inside the tracer's hooks, if one happened (the program itself went on untouched)."""

    def __enter__(self) -> trace:
        from ._tracing.frames import site_of
        from ._tracing.hub import hub
        from ._tracing.recorder import Recorder

        recorder = Recorder(self._extra, site_of(sys._getframe(1)), self._aliases)
        hub.add(recorder)
        self._open.push(recorder)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        from ._tracing.frames import site_of
        from ._tracing.hub import hub

        recorder = self._open.pop_own()
        if recorder is None:
            raise RuntimeError("rng_fork.trace exited more often than it was entered")
        try:
            hub.remove(recorder, site_of(sys._getframe(1)))
        finally:
            self.events.extend(_public(event) for event in recorder.events)
            if hub.failure is not None and self.failure is None:
                self.failure = hub.failure

    def summary(self) -> list[RngSummaryRow]:
        """The events grouped by (source, kind, op, filename, lineno), most frequent first.

        Example::

            for row in tr.summary():
                print(row.count, row.source, row.op, f"{row.filename}:{row.lineno}")
        """
        counts: dict[tuple[str, str, str, str, int], list[Any]] = {}
        for event in self.events:
            key = (event.source, event.kind, event.op, event.filename, event.lineno)
            entry = counts.setdefault(key, [event.function, 0])
            entry[1] += 1
        rows = [RngSummaryRow(*key, function, count) for key, (function, count) in counts.items()]
        order = {key: i for i, key in enumerate(counts)}
        return sorted(rows, key=lambda r: (-r.count, order[(r.source, r.kind, r.op, r.filename, r.lineno)]))

    def changed_sources(self) -> list[str]:
        """The sources named by at least one event, in order of first appearance.

        Example::

            assert tr.changed_sources() == ["torch"]
        """
        return list(dict.fromkeys(event.source for event in self.events))

    def report(self, *, labels: Mapping[str, str] | None = None) -> str:
        """A readable table: per source, each line that drew, how often and with what, most frequent first.

        ``labels`` replaces file names in the table (a notebook cell's file by ``"Cell In[3]"``).

        Example::

            print(tr.report())
        """
        return format_report(self.summary(), labels=labels, failure=self.failure)

    def to_json(self) -> dict[str, Any]:
        """The events and the summary as plain data (what ``python -m rng_fork trace --json`` writes).

        Example::

            json.dumps(tr.to_json())
        """
        return {
            "events": [{**asdict(event), "stack": list(event.stack)} for event in self.events],
            "summary": [asdict(row) for row in self.summary()],
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path``.

        Example::

            tr.write_json("rng_events.json")
        """
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")


def _numpy_generator_aliases(entries: Any) -> list[tuple[int, int]]:
    import numpy as np

    return [(id(e), id(e.bit_generator)) for e in entries if isinstance(e, np.random.Generator)]


def _public(event: Any) -> RngEvent:
    site = event.site
    after = str(event.after) if event.after is not None else None
    return RngEvent(event.source, event.kind, event.op, site.filename, site.lineno, site.function, site.stack, after)


def _short(filename: str, labels: Mapping[str, str] | None) -> str:
    if labels and filename in labels:
        return labels[filename]
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive on Windows
        return filename
    return filename if relative.startswith("..") else relative


def _where(row: RngSummaryRow, labels: Mapping[str, str] | None) -> str:
    return f"{_short(row.filename, labels)}:{row.lineno} in {row.function}"


def format_report(
    rows: list[RngSummaryRow], *, labels: Mapping[str, str] | None = None, failure: BaseException | None = None
) -> str:
    """The table :meth:`trace.report` prints, from summary rows.

    Example::

        print(format_report(tr.summary()))
    """
    if not rows:
        lines = ["rng_fork.trace: no generator was consumed or changed"]
    else:
        total = sum(row.count for row in rows)
        sources = list(dict.fromkeys(row.source for row in rows))
        lines = [f"rng_fork.trace: {total} event(s) on {len(sources)} source(s): {', '.join(sources)}"]
        for source in sources:
            mine = [row for row in rows if row.source == source]
            lines += ["", f"{source} ({sum(row.count for row in mine)} event(s))"]
            table = [("count", "kind", "op", "where")] + [
                (str(row.count), row.kind, row.op or "?", _where(row, labels))
                for row in mine
            ]
            widths = [max(len(cells[i]) for cells in table) for i in range(3)]
            for cells in table:
                lines.append(
                    f"  {cells[0]:>{widths[0]}}  {cells[1]:<{widths[1]}}  {cells[2]:<{widths[2]}}  {cells[3]}"
                )
        if any(row.kind == "unattributed" for row in rows):
            lines += ["", "unattributed: the state changed where no hook saw the call (see RngEvent.after for when)"]
            if sys.version_info < (3, 12) and any(row.kind == "unattributed" and row.source == "numpy" for row in rows):
                lines.append(
                    "  (on Python 3.11 NumPy's legacy methods are invisible to the profiler: their draws are found "
                    "by state and placed at the nearest call)"
                )
    if failure is not None:
        lines += ["", f"rng_fork.trace: the tracer itself failed ({type(failure).__name__}: {failure}); "
                  "events after that may be missing"]
    return "\n".join(lines)
