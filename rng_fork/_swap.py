"""The one mechanism that saves and puts back generator states.

``fork_rng``, ``RngStream``, ``@isolated`` and ``set_rng_state`` all go through
:class:`Capture`: take the live states of a set of sources, later put them
back, restoring every source even when one fails.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from .errors import RngForkWarning, RngRestoreError
from .sources import LazyGuard, Part, RngSource, registered_sources
from .sources.registry import guarded_sources

# Expansions per (registry, devices, availability of each source): a fork then
# costs one look-up instead of asking every source what it stands for.
_expansions: dict[tuple[object, ...], tuple[RngSource, ...]] = {}


def live_sources(devices: Sequence[int] | None, extra: Sequence[RngSource] = ()) -> list[RngSource]:
    """The registered sources that can be captured now, then ``extra``.

    Raises ``ValueError`` (before anything is captured) if ``devices`` names a
    device that a device source does not have.
    """
    families = registered_sources()
    if devices:
        for family in families:
            family.check_devices(devices)
    key = (families, devices, *[family.available() for family in families])
    expanded = _expansions.get(key)
    if expanded is None:
        expanded = tuple(source for family in families for source in family.expand(devices))
        if len(_expansions) > 64:
            _expansions.clear()
        _expansions[key] = expanded
    return [*expanded, *extra]


def restore_all(entries: Iterable[tuple[RngSource, Part]], guards: Iterable[LazyGuard] = ()) -> None:
    """Restore every entry and release every guard; then raise for those that failed.

    A failure does not stop the others: the process is never left half-restored
    without an error that names each source that could not be put back.
    """
    failures: dict[str, BaseException] = {}
    for source, part in entries:
        try:
            source.restore(part)
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            failures[source.name] = exc
    for guard in guards:
        try:
            guard.release()
        except Exception as exc:  # noqa: BLE001
            failures[f"{type(guard).__name__}"] = exc
    if failures:
        raise RngRestoreError(failures)


T = TypeVar("T")


class ThreadStack(threading.local, Generic[T]):
    """What a reusable context manager has open, per thread, so one object can be
    entered in several threads at once (and nested in each)."""

    def __init__(self) -> None:
        self.open: list[T] = []


class Capture:
    """Live states of some sources, and guards for runtimes not yet initialized.

    Example::

        saved = Capture.take(devices=None)
        ...                     # draw from anything
        saved.restore()         # every generator as it was
    """

    __slots__ = ("entries", "guards")

    def __init__(self, entries: list[tuple[RngSource, Part]], guards: list[LazyGuard]) -> None:
        self.entries = entries
        self.guards = guards

    @classmethod
    def take(
        cls, devices: Sequence[int] | None, extra: Sequence[RngSource] = (), *, guard: bool = True
    ) -> Capture:
        """Capture every live source (and ``extra``); with ``guard``, guard lazy runtimes."""
        sources = live_sources(devices, extra)
        entries = [(source, source.capture()) for source in sources]
        guards: list[LazyGuard] = []
        if guard:
            for family in guarded_sources():
                lazy = family.guard(devices)
                if lazy is not None:
                    guards.append(lazy)
        return cls(entries, guards)

    def seed(self, seed: int) -> None:
        """Seed every captured source and guarded runtime from ``seed``."""
        for source, _ in self.entries:
            source.seed(seed)
        for guard in self.guards:
            guard.seed(seed)

    def restore(self) -> None:
        """Put every captured source back, and undo what happened to guarded runtimes."""
        restore_all(self.entries, self.guards)


# Forks open per thread: the generators are process-wide, so a fork in one
# thread while another thread has one open sees (and undoes) its draws.
_open_forks: dict[int, int] = {}
_warned_threads = False


def _note_open() -> None:
    global _warned_threads
    me = threading.get_ident()
    others = len(_open_forks) - (1 if me in _open_forks else 0)
    if others > 0 and not _warned_threads:
        _warned_threads = True
        warnings.warn(
            "rng_fork: a fork was entered while another thread has one open. The generators are "
            "process-wide, so each thread's block sees the other's draws and the first to exit undoes "
            "them; give each thread its own generator objects (generators=) instead.",
            RngForkWarning,
            stacklevel=4,
        )
    _open_forks[me] = _open_forks.get(me, 0) + 1


def _note_closed() -> None:
    me = threading.get_ident()
    left = _open_forks.get(me, 1) - 1
    if left:
        _open_forks[me] = left
    else:
        _open_forks.pop(me, None)


def enter(devices: Sequence[int] | None, extra: Sequence[RngSource], seed: int | None) -> Capture:
    """Open a fork: capture (and guard) every source, then seed them if asked."""
    _note_open()
    try:
        capture = Capture.take(devices, extra)
        if seed is not None:
            capture.seed(seed)
    except BaseException:
        _note_closed()
        raise
    return capture


def leave(capture: Capture, exc: BaseException | None) -> None:
    """Close a fork: restore everything; a failure is chained to the block's exception."""
    try:
        capture.restore()
    except RngRestoreError as failure:
        if exc is not None:
            raise failure from exc
        raise
    finally:
        _note_closed()
