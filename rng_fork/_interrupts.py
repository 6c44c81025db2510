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

It goes in and out through the interpreter's SIGINT slot, where that is found
and verified (:mod:`rng_fork._sigint_slot`): the same change ``signal.signal``
makes between two Python handlers, without its ``sigaction`` system call
(elsewhere, ``signal.signal``). The slot owns a reference to its handler. One to
rng_fork's is held from the moment the slot is found and lent to the slot while
rng_fork's is in it; the program's handler keeps the one the slot had, and has
it back with its place. A program that sets a handler meanwhile makes CPython
give up the slot's reference to rng_fork's: the block's end holds a new one and
drops the kept one of the handler no longer in the slot.

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

from . import _sigint_slot as sigint_slot

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

_slot: memoryview | None = None
"""The interpreter's SIGINT handler slot, written instead of calling ``signal.signal`` once found
(see :mod:`rng_fork._sigint_slot`): looked for at the first install, then fixed for the process."""

_slot_info: str | None = None
"""What looking for the slot found (None: not looked for yet)."""


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
            if _slot is not None:
                # The table's reference to current stays counted while _handler stands in its
                # place (with _handler's own, held since the slot was found), and goes back with it.
                _slot[0] = _HANDLER_ADDRESS
            else:
                _install()
    _open += 1
    return True


def _install() -> None:
    """Install the handler through ``signal.signal``, after looking for the slot the first time."""
    global _previous
    if _slot_info is None:
        _look_for_slot(_previous)
        if _slot is not None:
            _slot[0] = _HANDLER_ADDRESS
            return
    try:
        _signal.signal(_SIGINT, _handler)
    except (ValueError, OSError):  # a subinterpreter cannot set handlers: nothing to protect there
        _previous = None


def _look_for_slot(current: Any) -> None:
    """Find the slot, with ``current`` installed; from then on ``_handler``'s reference in the
    table is one held here (:func:`sigint_slot.hold`), whether or not it is installed."""
    global _slot, _slot_info
    _slot, _slot_info = sigint_slot.find(current)
    if _slot is not None:
        sigint_slot.hold(_handler)


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
            if _slot is not None:
                _slot[0] = id(_previous)
            else:
                try:
                    _signal.signal(_SIGINT, _previous)
                except ValueError:
                    # Only the main thread can set a handler (asking it which thread this is costs
                    # more): a block that ended in another thread leaves it in place, passing
                    # everything on, until the main thread's next block ends.
                    return
        elif _slot is not None:
            # The program set a handler through signal.signal, which gave up the table's
            # reference to _handler: hold one again. _previous's stays counted: drop it.
            sigint_slot.hold(_handler)
            sigint_slot.release(_previous)
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


def slot_info() -> str:
    """How rng_fork's handler goes in and out: through the verified slot or ``signal.signal``.

    Looks for the slot if no block has yet (in the main thread, where a Python handler is installed).
    """
    if _slot_info is None and not _open and get_ident() == MAIN_THREAD:
        current = _signal.getsignal(_SIGINT)
        if callable(current) and current is not _handler:
            _look_for_slot(current)
    return _slot_info or "not looked for yet: at the first block in the main thread under a Python SIGINT handler"


def installed() -> bool:
    """Whether rng_fork's handler is the SIGINT handler now."""
    return _signal.getsignal(_SIGINT) is _handler


_HANDLER_ADDRESS = id(_handler)

protected(_handler)
protected(shield)
protected(_install)
protected(unshield)
