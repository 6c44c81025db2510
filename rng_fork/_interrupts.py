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

_previous_address = 0
"""``id(_previous)``, taken as it was installed: the slot's word to write back (no call on the way)."""

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
    global _open, _previous, _previous_address
    if get_ident() != MAIN_THREAD:
        return False
    if not _open:
        if _slot_info is None and _previous is None:  # never with a handler installed officially
            _look_for_slot()
        current = _signal.getsignal(_SIGINT)
        # Still installed (a block ended in another thread): it passes on to _previous as before.
        if current is not _handler and callable(current):
            if _slot is not None:
                if _previous is not None:
                    _account_for_replaced()  # left installed by a block that ended in another thread
                address = id(current)
                # Read and written in one line, with no call in it: CPython runs signal handlers
                # and switches threads as calls return (a line tracer, also between lines), so
                # nothing comes in between. The table's reference to current stays counted while
                # _handler stands in its place (with _handler's own, held since the slot was found).
                displaced, _slot[0], _previous, _previous_address = _slot[0], _HANDLER_ADDRESS, current, address
                if displaced != address:
                    # A handler that ran since getsignal returned set another: it stays, uncovered.
                    _slot[0], _previous = displaced, None
            else:
                _install(current)
    _open += 1
    return True


def _install(current: Any) -> None:
    """Install the handler in front of ``current`` through ``signal.signal``."""
    global _previous
    _previous = current
    try:
        displaced = _signal.signal(_SIGINT, _handler)
    except (ValueError, OSError):  # a subinterpreter cannot set handlers: nothing to protect there
        _previous = None
        return
    if displaced is not current:  # a handler that ran since getsignal returned set another
        if callable(displaced):
            _previous = displaced
        else:
            _signal.signal(_SIGINT, displaced)
            _previous = None


def _look_for_slot() -> None:
    """Look for the slot under the handler in place, if it is a Python callable (else at a later
    block). Once found, a reference to ``_handler`` is held for the slot: whenever it is there, the
    table owns that one."""
    global _slot, _slot_info
    current = _signal.getsignal(_SIGINT)
    if current is _handler or not callable(current):
        return
    slot, info = sigint_slot.find(current)
    if slot is not None:
        sigint_slot.incref(_handler)
    _slot, _slot_info = slot, info  # no call between: once published, the reference is held


def _account_for_replaced() -> None:
    """The program replaced rng_fork's handler through ``signal.signal``, which gave up the table's
    reference to it: hold one again; ``_previous``'s stays counted, drop it. In this order, so that
    an interrupt at any line leaves a reference too many (never one too few), and the next block
    does what is left."""
    global _previous
    previous = _previous
    sigint_slot.incref(_handler)
    _previous = None
    sigint_slot.decref(previous)


def unshield(shielded: bool) -> None:
    """Close a stretch :func:`shield` opened; the last one puts the previous handler back,
    unless the program installed a handler of its own meanwhile."""
    global _open, _previous
    if not shielded:
        return
    _open -= 1
    if _open or _previous is None:
        return
    if _slot is not None:
        # Written from the main thread only, as signal.signal is: a block that ended in another
        # thread leaves the handler in place, passing everything on, until the main thread's next
        # block ends; and no thread can come in between this thread's check and write.
        if get_ident() != MAIN_THREAD:
            return
        # No call from here to the write (see shield): a handler that ran as get_ident returned
        # has opened and closed any block it opened.
        if _open or _previous is None:
            return
        if _slot[0] == _HANDLER_ADDRESS:
            _slot[0], _previous = _previous_address, None  # the table's counted reference is previous's again
        else:
            _account_for_replaced()
        return
    # Put back first, forget after: a SIGINT in between still finds a handler to pass on to.
    if _signal.getsignal(_SIGINT) is _handler:
        previous = _previous
        if previous is None:  # a handler that ran as getsignal returned put it back
            return
        try:
            _signal.signal(_SIGINT, previous)
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


def slot_info() -> str:
    """How rng_fork's handler goes in and out: through the verified slot or ``signal.signal``.

    The slot is looked for at the first block in the main thread under a Python SIGINT handler;
    asking changes nothing.
    """
    return _slot_info or "not looked for yet: at the first block in the main thread under a Python SIGINT handler"


def installed() -> bool:
    """Whether rng_fork's handler is the SIGINT handler now."""
    return _signal.getsignal(_SIGINT) is _handler


_HANDLER_ADDRESS = id(_handler)

protected(_handler)
protected(shield)
protected(_install)
protected(_look_for_slot)
protected(_account_for_replaced)
protected(unshield)
