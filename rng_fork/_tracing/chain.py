"""On Python 3.11: the profile function that was installed before a trace, kept and put back.

``sys.setprofile`` holds one profile function per thread. cProfile installs a C
function (``sys.getprofile()`` then returns the ``Profile`` object, which is
not callable), so neither calling it from Python nor ``sys.setprofile`` can
put it back. The thread state keeps the C function and its object side by
side (``c_profilefunc``, ``c_profileobj``); their place is found at the first
trace by installing a known function and looking for it, and checked again on
every use. A profiler whose C function can be found gets every event of the
block forwarded to it and is put back with ``PyEval_SetProfile``; a plain
Python profile function is called and put back directly.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

ProfileFunction = Callable[..., object]

_WHAT = {"call": 0, "exception": 1, "line": 2, "return": 3, "c_call": 4, "c_exception": 5, "c_return": 6}
_C_PROFILE = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_void_p, ctypes.c_int, ctypes.py_object)
_WORDS = 64


def _marker(frame: FrameType, event: str, arg: Any) -> None:
    return None


class _Layout:
    """Where the calling thread's state keeps its profile function (None: not found)."""

    def __init__(self) -> None:
        self.function_index: int | None = None
        self.trampoline: int | None = None
        try:
            get = ctypes.pythonapi.PyThreadState_Get
            get.restype = ctypes.c_void_p
            self._get = get
            set_profile = ctypes.pythonapi.PyEval_SetProfile
            set_profile.argtypes = [ctypes.c_void_p, ctypes.py_object]
            set_profile.restype = None
            self._set = set_profile
            self._discover()
        except Exception:  # noqa: BLE001 - not CPython, or another layout: only Python profile functions chain
            self.function_index = None

    def _words(self) -> Any:
        return (ctypes.c_void_p * _WORDS).from_address(self._get())

    def _discover(self) -> None:
        # In a thread of its own, so the calling thread's profiler (cProfile, say) stays as it is.
        found: list[tuple[int, int]] = []

        def look() -> None:
            sys.setprofile(_marker)
            try:
                words = self._words()
                hits = [i for i in range(2, _WORDS) if words[i] == id(_marker)]
                if len(hits) == 1 and words[hits[0] - 2]:
                    # c_profilefunc, c_tracefunc, c_profileobj, c_traceobj: the function two words before.
                    found.append((hits[0] - 2, int(words[hits[0] - 2])))
            finally:
                sys.setprofile(None)

        thread = threading.Thread(target=look, name="rng_fork.trace layout")
        thread.start()
        thread.join()
        if found:
            self.function_index, self.trampoline = found[0]

    def current(self) -> tuple[int, object] | None:
        """The calling thread's (C function, object), if they can be read and agree with ``sys.getprofile()``."""
        index = self.function_index
        obj = sys.getprofile()
        if index is None or obj is None:
            return None
        words = self._words()
        if words[index + 2] != id(obj) or not words[index]:
            return None
        return int(words[index]), obj

    def install(self, function: int, obj: object) -> None:
        self._set(function, obj)


_layout: _Layout | None = None


def layout() -> _Layout:
    """The layout, found once."""
    global _layout
    if _layout is None:
        _layout = _Layout()
    return _layout


class Previous:
    """The calling thread's profile function at the start of a trace.

    ``forward`` passes an event on to it (None when there is none, or when it
    cannot be called from Python); ``restore`` puts it back.
    """

    def __init__(self) -> None:
        self.obj = sys.getprofile()
        self.forward: ProfileFunction | None = None
        self._c_function: int | None = None
        if self.obj is None:
            return
        found = layout().current()
        if found is not None and found[0] != layout().trampoline:
            function, obj = found
            self._c_function = function
            c_function = _C_PROFILE(function)
            what = _WHAT

            def forward(frame: FrameType, event: str, arg: Any) -> None:
                c_function(obj, id(frame), what[event], arg)

            self.forward = forward
        elif callable(self.obj):
            self.forward = self.obj

    @property
    def lost(self) -> bool:
        """Whether a profiler was installed that the trace can neither call nor put back."""
        return self.obj is not None and self.forward is None

    def restore(self) -> None:
        """Install it again in the calling thread."""
        if self._c_function is not None:
            layout().install(self._c_function, self.obj)
        elif self.forward is not None:
            sys.setprofile(self.forward)
        else:
            enable = getattr(self.obj, "enable", None)  # a cProfile.Profile whose C function was not found
            sys.setprofile(None)
            if callable(enable):
                enable()
