"""The one mechanism that saves and puts back generator states.

``fork_rng``, ``RngStream``, ``@isolated`` and ``set_rng_state`` all go through
:class:`Capture`: take the live states of a set of sources, later put them
back, restoring every source even when one fails.

A fork is on the hot path of training loops, so what it captures is worked out
once into a :class:`Plan` and reused until the registry or the availability
of a source changes (a CUDA initialization, say).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from threading import get_ident
from typing import Any, TypeVar

from ._compile import keep_dynamo_out
from .errors import RngForkWarning, RngRestoreError
from .sources import LazyGuard, Part, RngSource, registered_sources
from .sources.registry import on_change as on_registry_change

# Compiled code calls all of this eagerly, never traced.
keep_dynamo_out()


class SourceSet:
    """Sources with their :meth:`~RngSource.savers`, resolved once and reused by every fork."""

    __slots__ = ("loads", "saves", "sources")

    def __init__(self, sources: Iterable[RngSource] = ()) -> None:
        self.sources = tuple(sources)
        pairs = [source.savers() for source in self.sources]
        self.saves = tuple(save for save, _ in pairs)
        self.loads = tuple(load for _, load in pairs)

    def check_settled(self) -> None:
        """Raise, before anything changes, if any source must not be seeded or kept now."""
        for source in self.sources:
            source.check_settled()

    def __add__(self, other: SourceSet) -> SourceSet:
        joined = SourceSet()
        joined.sources = self.sources + other.sources
        joined.saves = self.saves + other.saves
        joined.loads = self.loads + other.loads
        return joined


NO_SOURCES = SourceSet()


class Plan:
    """The sources a fork over ``devices`` saves, and the families it guards.

    Valid while every probe (the ``available`` of each family whose
    availability can change) gives the answer it gave when the plan was made;
    a change to the registry drops every plan.
    """

    __slots__ = ("flags", "guarded", "probes", "sources")

    def __init__(self, families: tuple[RngSource, ...], devices: Sequence[int] | None) -> None:
        if devices:
            for family in families:
                family.check_devices(devices)
        present = [family for family in families if not family.inert()]
        self.probes: tuple[Callable[[], bool], ...] = tuple(
            family.available for family in present if type(family).available is not RngSource.available
        )
        self.flags = [probe() for probe in self.probes]
        self.sources = SourceSet(source for family in present for source in family.expand(devices))
        self.guarded = tuple(family for family in present if type(family).guard is not RngSource.guard)

    def current(self) -> bool:
        """Whether every source is as available as when the plan was made."""
        return not self.probes or [probe() for probe in self.probes] == self.flags


_plans: dict[Sequence[int] | None, Plan] = {}
_registry_changes = 0


def _registry_changed() -> None:
    global _registry_changes
    _registry_changes += 1
    _plans.clear()


on_registry_change(_registry_changed)


def plan_for(devices: Sequence[int] | None) -> Plan:
    """The current plan for ``devices`` (a tuple of indices or None for every device).

    Raises ``ValueError`` (before anything is saved) if ``devices`` names a
    device that a device source does not have.
    """
    plan = _plans.get(devices)
    if plan is None or not plan.current():
        changes = _registry_changes
        plan = Plan(registered_sources(), devices)
        # A registration while the plan was made would leave it stale: use it once, keep it not.
        if changes == _registry_changes:
            if len(_plans) > 64:
                _plans.clear()
            _plans[devices] = plan
    return plan


def live_sources(devices: Sequence[int] | None, extra: Sequence[RngSource] = ()) -> list[RngSource]:
    """The registered sources that can be saved now, then ``extra``."""
    return [*plan_for(devices).sources.sources, *extra]


def capture_parts(devices: Sequence[int] | None, extra: Sequence[RngSource] = ()) -> list[tuple[RngSource, Part]]:
    """``(source, part)`` for every live source and ``extra``: values a snapshot can keep."""
    return [(source, source.capture()) for source in live_sources(devices, extra)]


def _load_all(
    sources: Sequence[RngSource], loads: Sequence[Callable[[Any], object]], values: Sequence[Any],
    guards: Sequence[LazyGuard],
) -> None:
    """``load(value)`` for each source, then release each guard; raise for all that failed.

    A failure does not stop the others: the process is never left half-restored
    without an error that names each source that could not be put back.
    """
    if not guards:
        try:
            for load, value in zip(loads, values, strict=True):
                load(value)
        except Exception:  # noqa: BLE001 - redone below, where every failure is collected
            pass
        else:
            return
    failures: dict[str, BaseException] = {}
    for source, load, value in zip(sources, loads, values, strict=True):
        try:
            load(value)
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            failures[source.name] = exc
    for guard in guards:
        try:
            guard.release()
        except Exception as exc:  # noqa: BLE001
            failures[guard.name] = exc
    if failures:
        raise RngRestoreError(failures)


def restore_all(entries: Sequence[tuple[RngSource, Part]], guards: Sequence[LazyGuard] = ()) -> None:
    """Restore every ``(source, part)`` and release every guard; then raise for those that failed."""
    sources = [source for source, _ in entries]
    _load_all(sources, [source.restore for source in sources], [part for _, part in entries], guards)


T = TypeVar("T")


class ThreadStack(list[tuple[int, T]]):
    """What a reusable context manager has open, per thread, so one object can be
    entered in several threads at once (and nested in each).

    Items are kept with the thread that opened them; appending to and removing
    from a list are atomic, so threads need no lock. A list itself, because one
    is made for every ``fork_rng()``.
    """

    __slots__ = ()

    def push(self, item: T) -> None:
        """Open ``item`` in the calling thread."""
        self.append((get_ident(), item))

    def pop_own(self) -> T | None:
        """Close and return the calling thread's innermost item; None if nothing is open.

        A block can end in another thread than it began in (a generator resumed
        by a thread pool): then the innermost item of any thread is closed.
        """
        if not self:
            return None
        me = get_ident()
        entry = self[-1]
        if entry[0] != me:
            entry = next((e for e in reversed(self) if e[0] == me), entry)
        self.remove(entry)
        return entry[1]


class Capture:
    """What one fork saved: the sources, their saved values, the guards of lazy
    runtimes, and the thread that saved them. Made by :func:`take`.

    Example::

        saved = take(None)
        ...                     # draw from anything
        saved.restore()         # every generator as it was
    """

    __slots__ = ("guards", "owner", "saved", "sources")

    def __init__(self, sources: SourceSet, saved: list[Any], guards: Sequence[LazyGuard], owner: int) -> None:
        self.sources = sources
        self.saved = saved
        self.guards = guards
        self.owner = owner

    def seed(self, seed: int) -> None:
        """Seed every saved source and guarded runtime from ``seed``; none if any refuses."""
        self.sources.check_settled()
        for source in self.sources.sources:
            source.seed(seed)
        for guard in self.guards:
            guard.seed(seed)

    def restore(self) -> None:
        """Put every saved source back, and undo what happened to guarded runtimes."""
        _load_all(self.sources.sources, self.sources.loads, self.saved, self.guards)

    def parts(self) -> dict[str, tuple[str, Part]]:
        """The saved states as snapshot parts, ``{name: (codec tag, part)}``.

        Converted from each source's fastest form (``part_of``); no generator is touched.
        """
        return {
            source.name: (source.codec.tag, source.codec.check(source.part_of(saved)))
            for source, saved in zip(self.sources.sources, self.saved, strict=True)
        }


def take(devices: Sequence[int] | None, extra: SourceSet = NO_SOURCES, *, guard: bool = True) -> Capture:
    """Save every live source and ``extra``; with ``guard``, also guard lazy runtimes."""
    plan = _plans.get(devices)
    if plan is None or (plan.probes and not plan.current()):
        plan = plan_for(devices)
    sources = plan.sources + extra if extra.sources else plan.sources
    saved = [save() for save in sources.saves]
    guards: Sequence[LazyGuard] = ()
    if guard and plan.guarded:
        guards = [g for g in (family.guard(devices) for family in plan.guarded) if g is not None]
    return Capture(sources, saved, guards, get_ident())


# Forks open per thread: the generators are process-wide, so a fork in one
# thread while another thread has one open sees (and undoes) its draws.
_open_forks: dict[int, int] = {}
_warned_threads = False


def warn_threads(frames_to_user: int) -> None:
    """Warn, once per process, that a block opened while another thread has one open.

    ``frames_to_user``: how many frames the caller of this is below the user's code.
    """
    global _warned_threads
    if _warned_threads:
        return
    _warned_threads = True
    warnings.warn(
        "rng_fork: a fork was entered while another thread has one open. The generators are "
        "process-wide, so each thread's block sees the other's draws and the first to exit undoes "
        "them; give each thread its own generator objects (generators=) instead.",
        RngForkWarning,
        stacklevel=frames_to_user + 2,
    )


def enter(devices: Sequence[int] | None, extra: SourceSet, seed: int | None) -> Capture:
    """Open a fork: save (and guard) every live source and ``extra``, then seed them if asked.

    Example::

        capture = enter(None, NO_SOURCES, None)
        ...                     # draw from anything
        leave(capture, None)    # every generator as it was
    """
    me = get_ident()
    depth = _open_forks.get(me, 0)
    if len(_open_forks) > (depth > 0) and not _warned_threads:
        # First: a warning turned into an error must find nothing changed. Two frames: fork_rng.__enter__, user.
        warn_threads(2)
    capture = take(devices, extra)
    if seed is not None:
        try:
            capture.seed(seed)
        except BaseException:
            capture.restore()
            raise
    _open_forks[me] = depth + 1
    return capture


def leave(capture: Capture, exc: BaseException | None) -> None:
    """Close a fork: restore everything; a failure is chained to the block's exception."""
    me = capture.owner
    depth = _open_forks.get(me, 1) - 1
    if depth:
        _open_forks[me] = depth
    else:
        _open_forks.pop(me, None)
    try:
        capture.restore()
    except RngRestoreError as failure:
        if exc is not None:
            raise failure from exc
        raise
