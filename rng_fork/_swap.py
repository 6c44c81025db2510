"""The one mechanism that saves and puts back generator states.

``fork_rng``, ``RngStream``, ``@isolated`` and ``set_rng_state`` all go through
:class:`Saved`: take the live states of a set of sources, later put them
back, restoring every source even when one fails.

A fork is on the hot path of training loops, so what it saves is worked out
once into a :class:`Plan` and reused until the registry or the availability
of a source changes (a CUDA initialization, say).
"""

from __future__ import annotations

import functools
import operator
import warnings
from collections.abc import Callable, Collection, Iterable, Sequence
from threading import get_ident
from types import CodeType, TracebackType
from typing import Any, ClassVar, Generic, TypeVar

from ._compile import keep_dynamo_out
from ._interrupts import MAIN_THREAD, _held, protected, release_held, shield, unshield
from .errors import RngForkWarning, RngRestoreError
from .sources import (
    Devices,
    LazyGuard,
    Part,
    RngFamily,
    RngSource,
    generator_objects,
    registered_families,
    sources_of,
)
from .sources.base import InlineSavers
from .sources.registry import on_change as on_registry_change

# Compiled code calls all of this eagerly, never traced.
keep_dynamo_out()


def _straight_line(
    saves: Sequence[Callable[[], Any]], loads: Sequence[Callable[[Any], object]],
    inlines: Sequence[InlineSavers | None],
) -> tuple[Callable[[], list[Any]], Callable[[Sequence[Any]], None]]:
    """``save_all()`` and ``load_all(values)`` for these savers: one call each, without a loop.

    A fork saves and loads every source each time; written out, that is one frame
    instead of a comprehension's frame and a loop over pairs, and a source with
    inline savers copies its state right there, without a call of its own.
    """
    shapes = tuple(None if inline is None else (inline.save, inline.load, tuple(inline.names)) for inline in inlines)
    code = _straight_code.get(shapes)
    if code is None:
        saved, loaded = [], []
        for i, inline in enumerate(inlines):
            if inline is None:
                saved.append(f"s{i}()")
                loaded.append(f"l{i}(value_{i})")
            else:
                fields = {name: f"_{name}_{i}" for name in inline.names}
                saved.append(inline.save.format(**fields))
                loaded.append(inline.load.format(**fields, value=f"value_{i}"))
        text = f"def save_all():\n    return [{', '.join(saved)}]\ndef load_all(values):\n"
        if loaded:
            text += f"    {''.join(f'value_{i}, ' for i in range(len(loaded)))}= values\n"
        text += "".join(f"    {line}\n" for load in loaded for line in load.splitlines()) + "    return None\n"
        if len(_straight_code) >= 64:
            _straight_code.clear()
        code = _straight_code[shapes] = compile(text, "<rng_fork savers>", "exec")
    namespace: dict[str, Any] = {f"s{i}": save for i, save in enumerate(saves)}
    namespace.update({f"l{i}": load for i, load in enumerate(loads)})
    for i, inline in enumerate(inlines):
        if inline is not None:
            namespace.update({f"_{name}_{i}": value for name, value in inline.names.items()})
    exec(code, namespace)  # the code is built from the sources' templates and indices only
    return namespace["save_all"], namespace["load_all"]


_straight_code: dict[tuple[tuple[str, str, tuple[str, ...]] | None, ...], CodeType] = {}


def _inline_of(source: RngSource) -> InlineSavers | None:
    """The source's inline savers, if they belong to the savers it has: a subclass (or the
    object itself) that replaces ``savers()`` and not ``_inline_savers()`` is called, not written out."""
    if "savers" in getattr(source, "__dict__", ()):  # replaced on the object itself
        return None
    cls = type(source)
    for klass in cls.__mro__:
        if "savers" in vars(klass):
            return source._inline_savers() if "_inline_savers" in vars(klass) else None
    return None


class SourceSet:
    """Sources with their :meth:`~RngSource.savers`, resolved once and reused by every fork."""

    __slots__ = ("_joined", "graph_checks", "inlines", "load_all", "loads", "save_all", "saves", "sources")

    def __init__(self, sources: Iterable[RngSource] = ()) -> None:
        kept = tuple(sources)
        pairs = [source.savers() for source in kept]
        self._set(kept, [save for save, _ in pairs], [load for _, load in pairs], [_inline_of(s) for s in kept])

    def _set(
        self, sources: tuple[RngSource, ...], saves: Sequence[Callable[[], Any]],
        loads: Sequence[Callable[[Any], object]], inlines: Sequence[InlineSavers | None],
    ) -> None:
        self.sources = sources
        self.saves = tuple(saves)
        self.loads = tuple(loads)
        self.inlines = tuple(inlines)
        self.save_all, self.load_all = _straight_line(self.saves, self.loads, self.inlines)
        # Only sources that can be part of a graph capture are asked (devices).
        self.graph_checks = tuple(
            source.check_not_graph_capturing for source in sources
            if type(source).check_not_graph_capturing is not RngSource.check_not_graph_capturing
        )
        self._joined: tuple[SourceSet, SourceSet] | None = None

    def check_not_graph_capturing(self) -> None:
        """Raise, before anything changes, if any source is being captured into a CUDA graph."""
        for check in self.graph_checks:
            check()

    def __add__(self, other: SourceSet) -> SourceSet:
        joined = SourceSet.__new__(SourceSet)
        joined._set(
            self.sources + other.sources, self.saves + other.saves, self.loads + other.loads,
            self.inlines + other.inlines,
        )
        return joined

    def after(self, plan_sources: SourceSet) -> SourceSet:
        """``plan_sources + self``, made once per plan: the sources of a fork with ``generators=``."""
        joined = self._joined
        if joined is None or joined[0] is not plan_sources:
            joined = self._joined = (plan_sources, plan_sources + self)
        return joined[1]


NO_SOURCES = SourceSet()


class Plan:
    """The sources a fork over ``devices`` saves, and the families it guards.

    Valid while every probe (the ``available`` of each family whose
    availability can change) gives the answer it gave when the plan was made;
    a change to the registry drops every plan.
    """

    __slots__ = ("expected", "guarded", "probes", "sources")

    def __init__(self, families: tuple[RngFamily, ...], devices: Devices) -> None:
        if devices:
            for family in families:
                family.check_devices(devices)
        present = [family for family in families if not family.inert()]
        probed = [family for family in present if type(family).available is not RngFamily.available]
        self.probes: tuple[Callable[[], bool], ...] = tuple(family.available for family in probed)
        flags = [probe() for probe in self.probes]
        self.expected = tuple(zip(self.probes, flags, strict=True))
        self.sources = SourceSet(source for family in present for source in family.expand(devices))
        # A guard is for a runtime not yet initialized: a family that is available (and stays so
        # while the plan is current) is not asked.
        up = {id(family) for family, flag in zip(probed, flags, strict=True) if flag}
        self.guarded = tuple(
            family for family in present if type(family).guard is not RngFamily.guard and id(family) not in up
        )

    def current(self) -> bool:
        """Whether every source is as available as when the plan was made."""
        # A loop, not a comprehension: asked before every fork while a device runtime is up.
        for probe, flag in self.expected:  # noqa: SIM110 - all() costs a frame more
            if probe() != flag:
                return False
        return True


_plans: dict[Devices, Plan] = {}
_registry_changes = 0


def _registry_changed() -> None:
    global _registry_changes
    _registry_changes += 1
    _plans.clear()


on_registry_change(_registry_changed)


def plan_for(devices: Devices) -> Plan:
    """The current plan for ``devices`` (a tuple of indices or None for every device).

    Raises ``ValueError`` (before anything is saved) if ``devices`` names a
    device that a device source does not have.
    """
    plan = _plans.get(devices)
    if plan is None or not plan.current():
        changes = _registry_changes
        plan = Plan(registered_families(), devices)
        # A registration while the plan was made would leave it stale: use it once, keep it not.
        if changes == _registry_changes:
            if len(_plans) > 64:
                _plans.clear()
            _plans[devices] = plan
    return plan


_extras: dict[tuple[int, ...], tuple[tuple[object, ...], SourceSet]] = {}
_EXTRAS_KEPT = 16
"""How many ``generators=`` source sets are kept for reuse; they hold their generators alive, so
the cache is cleared when full rather than growing (a loop making new generators keeps at most these)."""


def extra_sources(generators: Iterable[object]) -> SourceSet:
    """The sources of ``generators=``, resolved once: how every block keeps them.

    The same generator objects get the same set again: ``with fork_rng(generators=[g])``
    in a loop builds its sources once, not for every fork.
    """
    if type(generators) is tuple and not generators:  # the default: built for every fork_rng()
        return NO_SOURCES
    objects = generator_objects(generators)  # what a loader or sampler draws from now
    key = tuple(map(id, objects))
    kept = _extras.get(key)
    if kept is not None and all(map(operator.is_, kept[0], objects)):
        return kept[1]
    sources = SourceSet(sources_of(objects))
    if len(_extras) >= _EXTRAS_KEPT:
        _extras.clear()
    _extras[key] = (tuple(objects), sources)
    return sources


def live_sources(devices: Devices, extra: SourceSet = NO_SOURCES) -> list[RngSource]:
    """The registered sources that can be saved now, then ``extra``."""
    return [*plan_for(devices).sources.sources, *extra.sources]


def snapshot_parts(devices: Devices, extra: SourceSet = NO_SOURCES) -> list[tuple[RngSource, Part]]:
    """``(source, part)`` for every live source and ``extra``: values a snapshot can keep."""
    return [(source, source.capture()) for source in live_sources(devices, extra)]


@protected
def _load_all(
    sources: Sequence[RngSource], loads: Sequence[Callable[[Any], object]], values: Sequence[Any],
    guards: Sequence[LazyGuard], load_all: Callable[[Sequence[Any]], None] | None = None,
) -> None:
    """``load(value)`` for each source, then release each guard; raise for all that failed.

    Neither a failure nor an interrupt stops the others: every source is loaded
    (one interrupted mid-load is loaded again), then the first interrupt is
    raised, or an error that names each source that could not be put back. The
    process is never left half-restored without one of them. ``load_all``, where
    given, loads them all in one go first (a :class:`SourceSet`'s).
    """
    if guards:
        _load_each(sources, loads, values, guards, None)
        return
    try:
        if load_all is not None:
            load_all(values)
        else:
            for load, value in zip(loads, values, strict=False):  # equal lengths, made together
                load(value)
        return
    except BaseException as exc:  # noqa: BLE001 - redone one by one below, where failures are collected
        failed = exc
    _load_each(sources, loads, values, guards, failed)


@protected
def _load_each(
    sources: Sequence[RngSource], loads: Sequence[Callable[[Any], object]], values: Sequence[Any],
    guards: Sequence[LazyGuard], failed: BaseException | None,
) -> None:
    """:func:`_load_all` one source at a time, after ``failed`` stopped loading them all at once
    (None: not tried); an interrupt among them is raised once every source is back."""
    interrupt = None if failed is None or isinstance(failed, Exception) else failed
    failures: dict[str, BaseException] = {}
    attempts: list[tuple[str, Callable[[], object]]] = [
        (src.name, functools.partial(load, saved)) for src, load, saved in zip(sources, loads, values, strict=True)
    ]
    attempts += [(guard.name, guard.release) for guard in guards]
    for name, attempt in attempts:
        for _ in range(2):  # an interrupted load is done again, once
            try:
                attempt()
            except Exception as exc:  # noqa: BLE001 - every failure is reported below
                failures[name] = exc
            except BaseException as exc:  # noqa: BLE001 - raised once every source is back
                interrupt = interrupt or exc
                failures[name] = exc
                continue
            else:
                failures.pop(name, None)
            break
    error = RngRestoreError(failures) if failures else None
    if interrupt is not None:
        if error is not None:
            interrupt.__context__ = error
        raise interrupt
    if error is not None:
        raise error


def _seed_layer(layer: Saved, seed: int) -> None:
    layer.sources.check_not_graph_capturing()
    for source in layer.sources.sources:
        source.seed(seed)
    for guard in layer.guards:
        guard.seed(seed)


_watched = False
"""Whether a watcher wrapped :func:`_load_all` (see :func:`watch_writes`): then every load goes through it."""


def watch_writes(wrap: Callable[[Callable[..., None]], Callable[..., None]]) -> Callable[[], None]:
    """Send every load of saved states and every seeding of a block through ``wrap(_load_all)`` and
    ``wrap(_seed_layer)`` (the tracer, which reports what rng_fork put in as its own reseeds, not as
    the program's draws); returns the function that stops it. Unwatched, a fork's exit loads its
    sources itself, without ``_load_all``."""
    global _load_all, _seed_layer, _watched
    original, original_seed, was_watched = _load_all, _seed_layer, _watched
    _load_all, _seed_layer, _watched = wrap(original), wrap(original_seed), True

    def unwatch() -> None:
        global _load_all, _seed_layer, _watched
        _load_all, _seed_layer, _watched = original, original_seed, was_watched

    return unwatch


@protected
def restore_all(entries: Sequence[tuple[RngSource, Part]], guards: Sequence[LazyGuard] = ()) -> None:
    """Restore every ``(source, part)`` and release every guard; then raise for those that failed.

    A SIGINT arriving meanwhile is held until every source is back.
    """
    shielded = shield()
    try:
        sources = [source for source, _ in entries]
        _load_all(sources, [source.restore for source in sources], [part for _, part in entries], guards)
    finally:
        unshield(shielded)
        release_held()


T = TypeVar("T")


class _Opened(Generic[T]):
    """One item a :class:`ThreadStack` has open, with the thread that opened it. Compared by
    identity, so that removing it is one C call that runs no Python code (atomic under the GIL)."""

    __slots__ = ("item", "thread")

    def __init__(self, thread: int, item: T) -> None:
        self.thread, self.item = thread, item


class ThreadStack(list[_Opened[T]]):
    """What a reusable context manager has open, per thread, so one object can be
    entered in several threads at once (and nested in each).

    Items are kept with the thread that opened them. Other threads push and pop
    while one looks for its own, so it looks in a copy (taken in one C call) and
    removes what it found by identity; threads need no lock. A list itself,
    because one is made for every ``fork_rng()``.
    """

    __slots__ = ()

    def push(self, item: T) -> None:
        """Open ``item`` in the calling thread."""
        self.append(_Opened(get_ident(), item))

    def pop_own(self) -> T | None:
        """Close and return the calling thread's innermost item; None if nothing is open.

        A block can end in another thread than it began in (a generator resumed
        by a thread pool): then the innermost item of any thread is closed.
        """
        me = get_ident()
        while True:
            entries = self[:]
            if not entries:
                return None
            entry = next((e for e in reversed(entries) if e.thread == me), entries[-1])
            try:
                self.remove(entry)
            except ValueError:  # another thread's, and that thread closed it first: look again
                continue
            return entry.item


class Saved:
    """What one block saved: the sources, their saved ``values``, the guards of lazy
    runtimes, the thread that saved them and the object that opened the block.
    Made by :func:`take`; open blocks are kept in :data:`_layers`.

    Example::

        saved = take(None)
        ...                     # draw from anything
        saved.restore()         # every generator as it was
    """

    __slots__ = ("guards", "homes", "inside", "opener", "orphan_of", "shielded", "sources", "thread", "values")

    # Set by take(), without an __init__: a block builds one per entry, and the call to an
    # __init__ costs a fork about 1k instructions.
    sources: SourceSet
    values: list[Any]
    guards: Sequence[LazyGuard]
    thread: int
    opener: object
    shielded: bool
    homes: list[tuple[Saved, int, int]] | None
    """A stream entered again below other blocks: where each of its generators' state is kept
    meanwhile, as (layer, index there, index here). None for any other block."""
    inside: Saved | None
    """The block whose code opened this one (the innermost block then running), if any."""
    orphan_of: Saved | None
    """Set when a block this one is inside was left before it: a block left open by a generator
    suspended in it (a fork across an ``@isolated`` generator's yield). Its saved states are that
    code's, so it is no stream's home, and no block is inside it, until it is left in turn."""

    def seed(self, seed: int) -> None:
        """Seed every saved source and guarded runtime from ``seed``; none if any refuses."""
        _seed_layer(self, seed)

    def restore(self, only: Collection[str] | None = None) -> None:
        """Put every saved source back (or those named in ``only``), and undo what happened
        to guarded runtimes."""
        sources = self.sources
        if only is None:
            _load_all(sources.sources, sources.loads, self.values, self.guards, sources.load_all)
            return
        kept = [i for i, source in enumerate(sources.sources) if source.name in only]
        _load_all(
            [sources.sources[i] for i in kept], [sources.loads[i] for i in kept], [self.values[i] for i in kept],
            self.guards,
        )

    def index_of(self, identity: object) -> int | None:
        """Where the source standing for the generator ``identity`` is, if this block saved it."""
        for index, source in enumerate(self.sources.sources):
            if source.identity() == identity:
                return index
        return None

    def parts(self) -> dict[str, tuple[str, Part]]:
        """The saved states as snapshot parts, ``{name: (codec tag, part)}``.

        Converted from each source's fastest form (``part_of``); no generator is touched.
        """
        return {
            source.name: (source.codec.tag, source.codec.check(source.part_of(saved)))
            for source, saved in zip(self.sources.sources, self.values, strict=True)
        }


def take(
    devices: Devices, extra: SourceSet = NO_SOURCES, guard: bool = True, opener: object = None,
    shielded: bool = False,
) -> Saved:
    """Save every live source and ``extra``; with ``guard``, also guard lazy runtimes.

    ``shielded``: whether :func:`shield` opened a stretch for the block, which it does in the
    main thread only.
    """
    plan = _plans.get(devices)
    if plan is None or (plan.probes and not plan.current()):
        plan = plan_for(devices)
    sources = extra.after(plan.sources) if extra.sources else plan.sources
    values = sources.save_all()
    guards: Sequence[LazyGuard] = ()
    if guard and plan.guarded:
        made = []  # a loop, not two comprehensions: asked at every fork while a runtime is down
        for family in plan.guarded:
            one = family.guard(devices)
            if one is not None:
                made.append(one)
        guards = made
    layer = Saved()
    layer.sources = sources
    layer.values = values
    layer.guards = guards
    layer.thread = MAIN_THREAD if shielded else get_ident()
    layer.opener = opener
    layer.shielded = shielded
    layer.homes = None
    layer.inside = _layers[-1] if _layers else None
    layer.orphan_of = None
    return layer


_layers: list[Saved] = []
"""Every open block, in the order entered, in all threads. The generators hold
the state of the top one's code; each layer holds what the one below had."""

_orphans = 0
"""How many open blocks are orphans (see :attr:`Saved.orphan_of`): while there are none,
the block on top is the one a new block is inside."""


def _running(layer: Saved | None) -> Saved | None:
    """``layer``, or the first block it is inside that is open and not an orphan: where code runs."""
    while layer is not None and (layer.orphan_of is not None or layer not in _layers):
        layer = layer.inside
    return layer


def _orphan_inside(left: Saved) -> None:
    """Mark the open blocks of ``left``'s thread that are inside ``left``, which was just left
    before them (a generator suspended in them), as orphans."""
    global _orphans
    for layer in _layers[:]:
        if layer.thread != left.thread or layer.orphan_of is not None:
            continue
        outer = layer.inside
        while outer is not None and outer is not left and outer.orphan_of is None and outer in _layers:
            outer = outer.inside
        if outer is left:
            layer.orphan_of = left
            _orphans += 1

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


Prepare = Callable[[Saved], object]


class Block:
    """What a ``with`` opens as a block: ``fork_rng``, the calls of an ``@isolated`` function, a stream.

    Its ``devices``, ``_extra`` and ``seed`` say what :func:`enter` saves and seeds, if it is
    ``enabled`` as it is entered (a disabled ``fork_rng`` runs its block plain). A plain
    fork's ``__enter__`` and ``__exit__`` are :func:`enter` and :func:`leave_opened` themselves:
    no method of its own between the ``with`` and them, two frames fewer on every fork.
    """

    __slots__ = ()

    devices: tuple[int, ...] | None
    _extra: SourceSet
    seed: int | None
    enabled = True
    _frames_to_user: ClassVar[int] = 1
    """How many frames ``enter`` is below the user's code (a warning's ``stacklevel``)."""


B = TypeVar("B", bound=Block)


@protected
def enter(opener: B, prepare: Prepare | None = None, *, seeded: bool = True, guard: bool = True) -> B:
    """Open a block for ``opener``: save (and guard) every live source and ``opener._extra``,
    then ``prepare`` the block's own states (a stream's) or, if ``seeded``, seed them from
    ``opener.seed`` when it has one. Returns ``opener``: a plain fork's ``__enter__``.

    Either the block is open when this returns, or nothing changed: a failure undoes
    what was done. A SIGINT is held meanwhile and passed on at the end; if its handler
    raises, the block is undone before the exception goes on.

    Example::

        enter(fork)             # fork_rng(...).__enter__()
        ...                     # draw from anything
        leave_opened(fork)      # every generator as it was
    """
    if not opener.enabled:
        return opener
    devices = opener.devices
    seed = opener.seed if seeded else None
    shielded = shield()
    layer: Saved | None = None
    try:
        # The only thread check a block needs: until the first warning, every open block is
        # one thread's, so another thread's block is on top if there is one at all.
        if _layers and not _warned_threads and _layers[-1].thread != get_ident():
            # First: a warning turned into an error must find nothing changed.
            warn_threads(opener._frames_to_user)
        layer = take(devices, opener._extra, guard, opener, shielded)
        if _orphans:  # the block on top may be an orphan, whose code is not running
            layer.inside = _running(layer.inside)
        if prepare is not None:
            prepare(layer)
        if seed is not None:
            layer.seed(seed)
        _layers.append(layer)
    except BaseException as exc:
        if layer is None:
            unshield(shielded)
            release_held()
        else:
            leave(layer, exc)
        raise
    if _held:
        # Passed on with the block open, as if it had arrived at the block's first line: a
        # handler that raises gets the block undone first; one that returns (a flag to stop
        # later) leaves the block running, forked.
        try:
            release_held()
        except BaseException as exc:
            leave(layer, exc)
            raise
    return opener


@protected
def leave(layer: Saved, exc: BaseException | None) -> None:
    """Close the block ``layer`` (open or not yet pushed); see :func:`leave_opened`."""
    leave_opened(layer.opener, None, exc, None, layer)


def _left_out_of_order(layer: Saved) -> None:
    global _orphans
    if layer.orphan_of is not None:
        _orphans -= 1
    _orphan_inside(layer)


@protected
def leave_opened(
    opener: object, exc_type: type[BaseException] | None = None, exc: BaseException | None = None,
    traceback: TracebackType | None = None, layer: Saved | None = None,
) -> None:
    """Close ``layer``, else the innermost block ``opener`` has open (see :func:`open_layer`), if
    it has one: put back what it saved, then raise a SIGINT held meanwhile.

    Takes what ``__exit__`` takes: a plain fork's ``__exit__``. A failure to restore is
    chained to the block's exception ``exc``.
    """
    if layer is None:
        if _layers:
            top = _layers[-1]
            # open_layer's first case, without its call: this is every fork's exit.
            layer = top if top.opener is opener and top.thread == get_ident() else open_layer(opener)
        if layer is None:
            if _held:
                release_held()
            return
    try:
        try:
            if layer.homes is not None:
                _send_home(layer)
            elif layer.guards or _watched:
                layer.restore()
            else:
                # layer.restore(), written out: two frames fewer on every fork's exit.
                sources = layer.sources
                try:
                    sources.load_all(layer.values)
                    failed = None
                except BaseException as error:  # noqa: BLE001 - redone one by one, where failures are collected
                    failed = error
                if failed is not None:
                    _load_each(sources.sources, sources.loads, layer.values, (), failed)
        finally:
            # One C call, so atomic however other threads open and close blocks meanwhile (a
            # look at the top, then a pop, is two steps), and by identity: a Saved has no __eq__.
            below_others = bool(_layers) and _layers[-1] is not layer
            try:  # noqa: SIM105 - contextlib.suppress would cost every fork a context manager
                _layers.remove(layer)
            except ValueError:  # never pushed: its entry failed
                pass
            if below_others or layer.orphan_of is not None:
                _left_out_of_order(layer)
            # unshield's common case written out, and release_held only when one is held:
            # calling them costs every fork about 1.1k instructions (3.5%, measured).
            if layer.shielded:
                unshield(True)
    except RngRestoreError as failure:
        if exc is not None and failure is not exc:
            raise failure from exc
        raise
    finally:
        if _held:
            release_held()


BLOCK_METHODS: dict[CodeType, str] = {enter.__code__: "__enter__", leave_opened.__code__: "__exit__"}
"""The methods whose code is :func:`enter`'s or :func:`leave_opened`'s (a tracer names them)."""


def open_layer(opener: object) -> Saved | None:
    """The innermost block ``opener`` has open in this thread, else in any thread, else None.

    A block can end in another thread than it began in (a generator resumed
    by a thread pool): then the innermost one of any thread is closed.
    """
    if not _layers:
        return None
    top = _layers[-1]
    me = get_ident()
    if top.opener is opener and top.thread == me:  # the common case: what this thread opened last
        return top
    found = None
    for layer in reversed(_layers[:]):  # a copy: other threads open and close blocks meanwhile
        if layer.opener is opener:
            if layer.thread == me:
                return layer
            found = found or layer
    return found


def homes_above(below: Saved) -> Prepare:
    """A ``prepare`` for entering again what ``below`` opened (a stream) while other blocks
    are open above it: its generators' states are where those blocks saved them.

    Each source of the new block is found in the lowest block above ``below`` that
    saved the same generator; there is the stream's state, which goes into the
    generator now and is written back there when the new block is left. A generator
    no block above saved still holds the stream's state and is left as it is.
    """
    return functools.partial(_load_homes, below)


@protected
def _load_homes(below: Saved, layer: Saved) -> None:
    layers = _layers[:]  # one copy: other threads open and close blocks meanwhile
    above = layers[layers.index(below) + 1:] if below in layers else []
    homes: list[tuple[Saved, int, int]] = []
    for here, source in enumerate(layer.sources.sources):
        identity = source.identity()
        for home in above:
            if home.orphan_of is not None:  # holds a suspended generator's states
                continue
            there = home.index_of(identity)
            if there is not None:
                homes.append((home, there, here))
                break
    _load_all(
        [home.sources.sources[there] for home, there, _ in homes],
        [home.sources.loads[there] for home, there, _ in homes],
        [home.values[there] for home, there, _ in homes],
        (),
    )
    layer.homes = homes


@protected
def _send_home(layer: Saved) -> None:
    """Leave a stream entered again: its states go back where they are kept, the caller's back in."""
    homes = layer.homes or []
    failures: dict[str, BaseException] = {}
    for home, there, _ in homes:
        try:
            home.values[there] = home.sources.saves[there]()
        except Exception as exc:  # noqa: BLE001 - reported with the loads below
            failures[home.sources.sources[there].name] = exc
    try:
        _load_all(
            [layer.sources.sources[here] for _, _, here in homes],
            [layer.sources.loads[here] for _, _, here in homes],
            [layer.values[here] for _, _, here in homes],
            (),
        )
    except RngRestoreError as error:
        failures.update(error.failures)
    if failures:
        raise RngRestoreError(failures)
