"""Calls of watched generators' methods: Python's ``random``, NumPy's legacy global, torch's generators.

A call of a global instance's method counts once, at the outermost call
(``choice``, not the ``_randbelow`` inside it), also through names imported
before the trace (``from random import random`` binds the same method). On
Python 3.12+ ``sys.monitoring`` reports every call in every thread, NumPy's
Cython methods included. On 3.11 ``sys.setprofile`` (and ``threading.setprofile``
for threads started during the trace) reports Python calls and calls of C
functions, but not NumPy's Cython methods: there a cheap look at the legacy
generator's Mersenne Twister position after every profiled event finds their
draws, which become ``unattributed`` events at the nearest call.

Of torch's generators only the methods that set a state count (``manual_seed``,
``set_state``, ...): their draws happen in ops, which the dispatch mode sees.
"""

from __future__ import annotations

import ctypes
import random
import sys
import threading
import types
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

import numpy as np

from ..errors import RngForkWarning
from .chain import Previous
from .frames import Site, is_tracer, site_of

RESEEDS = frozenset({
    "seed", "setstate", "set_state", "__setstate__", "manual_seed", "set_offset", "graphsafe_set_state",
    "set_bit_generator",
})
"""Methods that put a generator into a new state: ``kind="reseed"``."""

READERS = frozenset({
    "getstate", "get_state", "__getstate__", "__reduce__", "__reduce_ex__", "__copy__", "__deepcopy__",
    "initial_seed", "get_offset", "graphsafe_get_state", "clone_state", "get_bit_generator",
})
"""Methods that only read: never an event."""

TORCH = 1
"""The kind of a watched object whose draws the dispatch mode sees (a ``torch.Generator``)."""

_RANDOM_FILE = random.Random.choice.__code__.co_filename


def kind_of(owner_kind: int, method: str) -> str | None:
    """The event kind a call of ``method`` may be, or None if it is no event."""
    if method in READERS:
        return None
    if method in RESEEDS:
        return "reseed"
    return None if owner_kind == TORCH else "draw"


class Sink(Protocol):
    """What the hooks report to (the hub)."""

    ids: dict[int, int]
    """``id`` of each watched object -> its kind (``TORCH`` or 0)."""
    functions: dict[int, tuple[int, str]]
    """``id`` of a module-level function that acts on a watched object -> (that object's ``id``, op)."""
    quiet: int

    def call(self, obj_id: int, op: str, kind: str, site: Site) -> None: ...
    def returned(self, here: Callable[[], Site]) -> None: ...
    def changed(self, here: Callable[[], Site]) -> None: ...
    def failed(self, exc: BaseException) -> None: ...


def module_functions() -> dict[int, tuple[int, str]]:
    """NumPy's legacy module functions that are not bound methods of ``np.random.mtrand._rand``."""
    mtrand = np.random.mtrand
    found: dict[int, tuple[int, str]] = {}
    for name in ("seed", "set_bit_generator"):
        function = getattr(mtrand, name, None)
        if function is not None and getattr(function, "__self__", None) is not mtrand._rand:
            found[id(function)] = (id(mtrand._rand), name)
    return found


_BOUND = (types.MethodType, types.BuiltinMethodType)
_UNBOUND = {types.FunctionType, types.MethodDescriptorType, type(np.random.RandomState.rand)}


# --- Python 3.12+: sys.monitoring ---------------------------------------------------------------


def install_monitoring(sink: Sink) -> Callable[[], None]:
    """Report calls through ``sys.monitoring`` CALL events; returns the uninstaller."""
    monitoring = sys.monitoring  # type: ignore[attr-defined,unused-ignore]
    tool = next((i for i in (3, 4) if monitoring.get_tool(i) is None), None)
    if tool is None:
        warnings.warn(
            "rng_fork.trace: sys.monitoring tool ids 3 and 4 are both taken; calls of random's and NumPy's "
            "generators show as unattributed changes",
            RngForkWarning,
            stacklevel=4,
        )
        return lambda: None
    ids, functions = sink.ids, sink.functions
    disable = monitoring.DISABLE
    bound, unbound = _BOUND, _UNBOUND

    def on_call(code: types.CodeType, offset: int, function: object, arg0: object) -> object:
        filename = code.co_filename
        if filename == _RANDOM_FILE or sink.quiet:
            return None  # random's own inner calls: the outermost one counts
        try:
            kind_id = ids.get(id(arg0))
            if kind_id is not None and type(function) in unbound:
                name = getattr(function, "__name__", "")
                if getattr(type(arg0), name, None) is not function:
                    return None
                owner_id = id(arg0)
            elif type(function) in bound:
                owner_id = id(function.__self__)  # type: ignore[attr-defined]
                kind_id = ids.get(owner_id)
                if kind_id is None:
                    return disable if is_tracer(filename) else None
                name = function.__name__  # type: ignore[attr-defined]
            else:
                known = functions.get(id(function))
                if known is None:
                    return disable if is_tracer(filename) else None
                owner_id, name = known
                kind_id = 0
            kind = kind_of(kind_id, name)
            if kind is not None:
                sink.call(owner_id, name, kind, site_of(sys._getframe(1)))
        except Exception as exc:  # noqa: BLE001 - the traced program must never see the tracer fail
            sink.failed(exc)
        return None

    monitoring.use_tool_id(tool, "rng_fork.trace")
    monitoring.register_callback(tool, monitoring.events.CALL, on_call)
    monitoring.set_events(tool, monitoring.events.CALL)

    def uninstall() -> None:
        monitoring.set_events(tool, 0)
        monitoring.register_callback(tool, monitoring.events.CALL, None)
        monitoring.free_tool_id(tool)

    return uninstall


# --- Python 3.11: sys.setprofile ----------------------------------------------------------------


class NumpyLocator:
    """Where the legacy global generator stands, read from memory through the fast path's verified
    views: its Mersenne Twister position, first key word and Gaussian cache flag (``position`` None
    without them). Every draw and every seed moves one of them.
    """

    def __init__(self) -> None:
        self.position: ctypes.c_int32 | None = None
        self.first: ctypes.c_uint32 | None = None
        self.gauss: ctypes.c_int | None = None
        from ..sources import _fastpath

        rs = np.random.mtrand._rand
        if not _fastpath.FAST_NUMPY or not isinstance(rs._bit_generator, np.random.MT19937):
            return
        entry = _fastpath._np_entry(rs)
        if entry is None:
            return
        self._entry = entry  # keeps the bit generator, and so the memory read, alive
        self.position = ctypes.c_int32.from_address(ctypes.addressof(entry.mt) + 624 * 4)
        self.first = ctypes.c_uint32.from_address(ctypes.addressof(entry.mt))
        self.gauss = entry.has_gauss


def install_profile(sink: Sink, locate_numpy: bool) -> Callable[[], None]:
    """Report calls through ``sys.setprofile`` here and in threads started from now on; returns the uninstaller."""
    closed = [False]
    locator = NumpyLocator() if locate_numpy else None
    previous = Previous()
    if previous.lost:
        warnings.warn(
            f"rng_fork.trace: the profiler installed before ({type(previous.obj).__name__}) cannot be called "
            "from Python here; it gets no events until the trace ends",
            RngForkWarning,
            stacklevel=4,
        )
    here = _make_profile(sink, previous.forward, locator, closed, previous.restore)
    thread_previous: Any = threading.getprofile() if hasattr(threading, "getprofile") else threading._profile_hook
    sys.setprofile(here)

    def start_in_thread(frame: FrameType, event: str, arg: Any) -> None:
        # Each thread gets its own hook (its pending call is its own), chained to threading's previous one.
        hook = _make_profile(sink, thread_previous, locator, closed, lambda: sys.setprofile(thread_previous))
        sys.setprofile(hook)
        hook(frame, event, arg)

    threading.setprofile(start_in_thread)

    def uninstall() -> None:
        if sys.getprofile() is here:
            previous.restore()
        if threading._profile_hook is start_in_thread:
            threading.setprofile(thread_previous)
        closed[0] = True  # hooks still installed (threads started meanwhile) take themselves off

    return uninstall


def _make_profile(
    sink: Sink,
    forward: Callable[..., object] | None,
    locator: NumpyLocator | None,
    closed: list[bool],
    on_closed: Callable[[], object],
) -> Callable[[FrameType, str, Any], None]:
    # Called for every Python call and return and every C call in the program: written for speed
    # (no method calls on the common path, every name a local).
    ids = sink.ids
    random_file = _random_file = _RANDOM_FILE
    pending: list[Any] = [None, None]  # the frame and the C function of the call awaiting its return
    position = locator.position if locator is not None else None
    first: Any = locator.first if locator is not None else None
    gauss: Any = locator.gauss if locator is not None else None
    seen = [position.value, first.value, gauss.value] if position is not None else [0, 0, 0]

    def numpy_checkpoint(frame: FrameType) -> None:
        # NumPy's legacy generator is seen only through its position: a change since the last look.
        if position is not None and (position.value != seen[0] or first.value != seen[1] or gauss.value != seen[2]):
            seen[:] = position.value, first.value, gauss.value
            if not sink.quiet:
                sink.changed(lambda: site_of(frame))

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if closed[0]:  # still installed after the trace ended (in a thread started meanwhile): off
            on_closed()
            return
        try:
            if pending[0] is frame:
                if event == "return" or (event[0] == "c" and event != "c_call" and arg is pending[1]):
                    pending[0] = pending[1] = None
                    sink.returned(lambda: site_of(frame))
            elif event == "c_call":
                owner_id = id(arg.__self__)
                if (
                    owner_id in ids and pending[0] is None and not sink.quiet
                    and frame.f_code.co_filename != random_file
                ):
                    kind = kind_of(ids[owner_id], arg.__name__)
                    if kind is not None:
                        numpy_checkpoint(frame)  # a change NumPy made before this call is not the call's
                        pending[0], pending[1] = frame, arg
                        sink.call(owner_id, arg.__name__, kind, site_of(frame))
            elif event == "call" and frame.f_code.co_filename == _random_file and pending[0] is None:
                caller = frame.f_back
                if not sink.quiet and (caller is None or caller.f_code.co_filename != random_file):
                    owner_id = id(frame.f_locals.get("self"))
                    kind = kind_of(ids[owner_id], frame.f_code.co_name) if owner_id in ids else None
                    if kind is not None:
                        numpy_checkpoint(frame)
                        pending[0], pending[1] = frame, None
                        sink.call(owner_id, frame.f_code.co_name, kind, site_of(caller))
            # numpy_checkpoint(frame), written out: this runs on every profile event.
            if position is not None and (
                position.value != seen[0] or first.value != seen[1] or gauss.value != seen[2]
            ):
                seen[:] = position.value, first.value, gauss.value
                if not sink.quiet:
                    sink.changed(lambda: site_of(frame))
        except Exception as exc:  # noqa: BLE001 - the traced program must never see the tracer fail
            sink.failed(exc)
        if forward is not None:
            forward(frame, event, arg)

    profile.rng_fork_hook = True  # type: ignore[attr-defined]
    return profile
