"""Installs every hook for the first open trace and removes them with the last.

The hooks (the dispatch mode, the call hook) report to the one hub, which
passes each report on to every open recorder under one lock: traces nest,
also in several threads, and all see the process-wide generators alike.

rng_fork's own restores (a ``fork_rng`` exit, an ``RngStream`` swap,
``set_rng_state``) write raw memory that no hook sees: while a trace is open,
the one function they all go through is wrapped so that what it puts back is
a ``reseed`` named after the rng_fork call, not an unattributed change.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch

from .. import _swap
from .calls import TORCH, install_monitoring, install_profile, module_functions
from .frames import Site, is_library, site_of
from .ops import DrawWatch
from .recorder import Pending, Recorder

_lock = threading.RLock()


class Hub:
    """The hooks' one listener while any trace is open."""

    def __init__(self) -> None:
        self.recorders: list[Recorder] = []
        self.ids: dict[int, int] = {}
        self.functions: dict[int, tuple[int, str]] = {}
        self.cdata: set[int] = set()  # torch generators watched, by their C++ object
        self.quiet = 0
        self.failure: BaseException | None = None
        self._uninstall: list[Callable[[], None]] = []
        self._modes: dict[int, tuple[DrawWatch, int]] = {}  # thread -> (its mode, how many traces opened it)
        self._pid = os.getpid()

    # --- open and close -----------------------------------------------------------------------

    def add(self, recorder: Recorder) -> None:
        with _lock:
            if not self.recorders:
                self._install()
            self.recorders.append(recorder)
            self._index()
            self._enter_mode()

    def remove(self, recorder: Recorder, here: Site) -> None:
        with _lock:
            try:
                recorder.checkpoint(here)
            finally:
                self.recorders.remove(recorder)
                self._leave_mode()
                if not self.recorders:
                    self._remove()
                else:
                    self._index()

    def _index(self) -> None:
        ids: dict[int, int] = {}
        cdata: set[int] = set()
        for recorder in self.recorders:
            for obj in recorder.watched.objects():
                ids[id(obj)] = 0
                if isinstance(obj, torch.Generator):
                    ids[id(obj)] = TORCH
                    cdata.add(obj._cdata)  # type: ignore[attr-defined]
            for alias in recorder.aliases():
                ids[alias] = 0
        self.ids.clear()
        self.ids.update(ids)
        self.cdata = cdata

    def _install(self) -> None:
        self.functions.clear()
        self.functions.update(module_functions())
        # Without it, what rng_fork puts back or seeds shows as unattributed changes.
        self._uninstall.append(_swap.watch_writes(self._restoring))
        if sys.version_info >= (3, 12):
            self._uninstall.append(install_monitoring(self))
        else:
            self._uninstall.append(install_profile(self, locate_numpy=True))

    def _remove(self) -> None:
        while self._uninstall:
            self._uninstall.pop()()

    def _enter_mode(self) -> None:
        me = threading.get_ident()
        mode, count = self._modes.get(me, (None, 0))
        if mode is None:
            mode = DrawWatch(self.run_drawing)
            mode.__enter__()  # type: ignore[no-untyped-call,unused-ignore]
        self._modes[me] = (mode, count + 1)

    def _leave_mode(self) -> None:
        me = threading.get_ident()
        mode, count = self._modes.get(me, (None, 0))
        if mode is None:
            return  # closed in another thread than it opened in: that thread's mode stays until it closes one
        if count > 1:
            self._modes[me] = (mode, count - 1)
            return
        del self._modes[me]
        mode.__exit__(None, None, None)  # type: ignore[no-untyped-call,unused-ignore]

    def forked(self) -> None:
        """In a forked child (a DataLoader worker): nothing is traced there; take the hooks off."""
        self.recorders.clear()
        self._pid = os.getpid()
        try:
            self._remove()
            me = threading.get_ident()
            mode = self._modes.pop(me, (None, 0))[0]
            self._modes.clear()
            if mode is not None:
                mode.__exit__(None, None, None)  # type: ignore[no-untyped-call,unused-ignore]
        except Exception as exc:  # noqa: BLE001 - the child must start whatever happens; its hooks pass through
            self.failed(exc)

    # --- what the hooks report ----------------------------------------------------------------

    def call(self, obj_id: int, op: str, kind: str, site: Site) -> None:
        """A watched object's method is about to run."""
        with _lock:
            for recorder in self.recorders:
                recorder.start(Pending(kind, op, site, frozenset({obj_id})))

    def returned(self, here: Callable[[], Site]) -> None:
        """The call reported last has returned."""
        with _lock:
            for recorder in self.recorders:
                if recorder.pending is not None:
                    recorder.checkpoint(here)

    def changed(self, here: Callable[[], Site]) -> None:
        """A generator changed where no hook saw a call (NumPy on Python 3.11)."""
        with _lock:
            for recorder in self.recorders:
                recorder.checkpoint(here)

    def failed(self, exc: BaseException) -> None:
        """A hook failed: the trace says so at its end, and the program goes on untouched."""
        if self.failure is None:
            self.failure = exc

    def run_drawing(self, func: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run an op that may draw between two checkpoints; whatever it changed is named by it."""
        generator = kwargs.get("generator")
        if (generator is not None and generator._cdata not in self.cdata) or os.getpid() != self._pid:
            return func(*args, **kwargs)  # a private generator (or a forked DataLoader worker): nothing watched
        caller = sys._getframe(2)
        cached: list[Site] = []

        def here() -> Site:
            if not cached:
                cached.append(site_of(caller))
            return cached[0]

        with _lock:
            self._checkpoint_all(here)
            try:
                return func(*args, **kwargs)
            finally:
                self._checkpoint_all(here, Pending("draw", name, here))

    def _checkpoint_all(self, here: Callable[[], Site] | Site, pending: Pending | None = None) -> None:
        # The 3.11 profile hook would see every call the checkpoint makes (tens of microseconds): it is
        # taken off meanwhile. Inside a hook's own callback no events arise, so this is for the op and
        # restore wrappers only.
        hook = sys.getprofile()
        paused = getattr(hook, "rng_fork_hook", False)
        if paused:
            sys.setprofile(None)
        try:
            for recorder in self.recorders:
                if pending is None:
                    recorder.checkpoint(here)
                else:
                    recorder.start_and_settle(Pending(pending.kind, pending.op, pending.site))
        finally:
            if paused:
                sys.setprofile(hook)

    def _restoring(self, load_all: Callable[..., None]) -> Callable[..., None]:
        def load_all_traced(*args: Any, **kwargs: Any) -> None:
            caller = _api_frame(sys._getframe(1))
            op = _op_of(caller)
            site = site_of(caller)
            with _lock:
                self._checkpoint_all(site)
                self.quiet += 1
                try:
                    load_all(*args, **kwargs)
                finally:
                    self.quiet -= 1
                    self._checkpoint_all(site, Pending("reseed", op, site))

        return load_all_traced


def _op_of(frame: FrameType) -> str:
    """The name of the rng_fork call running in ``frame``: a block's ``__enter__`` or ``__exit__``
    is named after the block's class (fork_rng's are the mechanism's functions themselves)."""
    code = frame.f_code
    method = _swap.BLOCK_METHODS.get(code)
    if method is not None:
        return f"{type(frame.f_locals['opener']).__name__}.{method}"
    return code.co_qualname if hasattr(code, "co_qualname") else method_qualname(frame)


def method_qualname(frame: FrameType) -> str:
    """``frame``'s function named as ``co_qualname`` (3.11+) names it, for a method or a module's
    function: Python 3.10's code objects know their name only, so a method's class is found from
    its first argument (``self`` or ``cls``)."""
    code = frame.f_code
    if code.co_argcount and code.co_varnames[0] in ("self", "cls"):
        first = frame.f_locals.get(code.co_varnames[0])
        for klass in (first if isinstance(first, type) else type(first)).__mro__:
            attribute = vars(klass).get(code.co_name)
            if getattr(getattr(attribute, "__func__", attribute), "__code__", None) is code:
                return f"{klass.__qualname__}.{code.co_name}"
    return code.co_name


def _api_frame(frame: FrameType) -> FrameType:
    """The outermost rng_fork frame below the user's: the rng_fork call the user made."""
    outermost = frame
    while frame is not None and is_library(frame.f_code.co_filename):
        if frame.f_code.co_filename.startswith(os.path.dirname(_swap.__file__)):
            outermost = frame
        frame = frame.f_back  # type: ignore[assignment]
    return outermost


hub = Hub()
os.register_at_fork(after_in_child=hub.forked)
