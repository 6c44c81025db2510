"""Interrupts never land inside rng_fork's own saving and restoring.

A ``KeyboardInterrupt`` comes from the SIGINT handler, which CPython runs in the
main thread at a bytecode boundary, the first instruction of a function among
them: one landing as ``__exit__`` starts is raised before any ``try`` in it can
catch it, and the block's generators would stay as the block left them. So
while a block is open in the main thread, rng_fork's handler stands in front of
the one that was installed: a SIGINT that arrives while rng_fork's own code
runs (a block being entered or left, a snapshot being loaded) is held until
that code has finished, then passed on; one that arrives anywhere else is
passed on at once. A second SIGINT while one is held is passed on at once, so
a restore that hangs can still be interrupted.

The handler is installed only while something is open and only where the
installed handler is a Python callable (SIGINT ignored or at its default
action raises nothing); afterwards the previous handler is put back, unless
the program installed another one meanwhile.

Example::

    shielded = shield()
    try:
        ...                 # a SIGINT here is held
    finally:
        unshield(shielded)  # and raised here, once everything is consistent
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal.getsignal converts to enums: 100x slower
from collections.abc import Callable
from threading import get_ident, main_thread
from types import CodeType, FrameType
from typing import Any, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])

_SIGINT = int(_signal.SIGINT)
MAIN_THREAD = cast(int, main_thread().ident)  # started: it runs this import or started the one that does
"""The only thread where SIGINT handlers run and can be set."""

_protected: set[CodeType] = set()
"""The code of every function during which a SIGINT is held."""

_held: list[tuple[Any, FrameType | None]] = []
"""Each held SIGINT: the handler it was meant for and the frame it arrived in (at most one)."""

_open = 0
"""How many shielded operations and blocks are open in the main thread."""

_previous: Any = None
"""The handler rng_fork's stands in front of while installed."""


def protected(fn: F) -> F:
    """Mark ``fn`` as rng_fork's own: a SIGINT arriving while it runs (or anything it calls) is held."""
    _protected.add(fn.__code__)
    return fn


def _handler(signum: int, frame: FrameType | None) -> Any:
    previous = _previous
    if not _held:
        inner = frame
        while inner is not None:
            if inner.f_code in _protected:
                _held.append((previous, frame))
                return None
            inner = inner.f_back
    return previous(signum, frame) if callable(previous) else None


def shield() -> bool:
    """Open a shielded stretch in the main thread; returns whether it was opened there.

    The first one installs the handler, when the one in place is a Python callable.
    """
    global _open, _previous
    if get_ident() != MAIN_THREAD:
        return False
    if not _open:
        current = _signal.getsignal(_SIGINT)
        # Still installed (a block ended in another thread): it passes on to _previous as before.
        if current is not _handler and callable(current):
            _previous = current
            try:
                _signal.signal(_SIGINT, _handler)
            except (ValueError, OSError):  # a subinterpreter cannot set handlers: nothing to protect there
                _previous = None
    _open += 1
    return True


def unshield(shielded: bool) -> None:
    """Close a stretch :func:`shield` opened; the last one puts the previous handler back,
    unless the program installed a handler of its own meanwhile."""
    global _open, _previous
    if not shielded:
        return
    _open -= 1
    if not _open and _previous is not None:
        # Put back first, forget after: a SIGINT in between still finds a handler to pass on to.
        if _signal.getsignal(_SIGINT) is _handler:
            try:
                _signal.signal(_SIGINT, _previous)
            except ValueError:
                # Only the main thread can set a handler (asking it which thread this is costs
                # more): a block that ended in another thread leaves it in place, passing
                # everything on, until the main thread's next block ends.
                return
        _previous = None


def held() -> bool:
    """Whether a SIGINT is being held."""
    return bool(_held)


def release_held() -> None:
    """Pass a held SIGINT on: its handler runs here, so its ``KeyboardInterrupt`` is raised here.

    Called where rng_fork's work is done and everything is consistent again.
    """
    if _held:
        handler, frame = _held.pop()
        if callable(handler):
            handler(_SIGINT, frame)


def installed() -> bool:
    """Whether rng_fork's handler is the SIGINT handler now."""
    return _signal.getsignal(_SIGINT) is _handler


protected(_handler)
protected(shield)
protected(unshield)
