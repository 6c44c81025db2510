"""A verified view of CPython's SIGINT handler slot: rng_fork's handler in and out without system calls.

``signal.signal(SIGINT, handler)`` makes a ``sigaction`` system call each time,
even between two Python callables, where the C-level handler stays the same
and only the interpreter's table entry (the object ``signal.getsignal`` returns)
changes. An outermost block installs rng_fork's handler and puts the program's
back: two such calls, about a fifth of a fork's time on the hosts measured.
Writing the table entry itself does the same without them.

Nothing about the table is assumed. The interpreter's writable memory (the
executable's or libpython's data and bss) is scanned for the words that hold
the installed handler, with nothing changed yet; then two probe handlers are
set through the official API, and the one word that follows both is the slot.
Writing each probe there must make ``signal.getsignal`` return it, the
reference counts of the probes must end where they began, and the program's
own handler is put back through the official API. Any mismatch, anything
unexpected, and the slot is not used: rng_fork calls ``signal.signal`` as before.

Off under ``RNG_FORK_PORTABLE=1``, outside CPython on Linux (the memory map
comes from ``/proc/self/maps``), on free-threaded builds and where pointers
are not 8 bytes. The table holds a reference to its handler: how a writer
keeps the counts right is said in :mod:`rng_fork._interrupts`.

Example::

    slot, why = find(signal.getsignal(signal.SIGINT))
    if slot is not None:
        slot[0] = id(handler)   # what signal.signal(SIGINT, handler) would do, minus the system call
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # what _interrupts calls: signal.getsignal converts to enums
import ctypes
import os
import struct
import sys
import sysconfig
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from .sources._fastpath import _portable_requested, _require_raw_memory_platform, _UnavailableError

_SIGINT = int(_signal.SIGINT)
_WORD = 8
_ET_DYN, _PT_LOAD, _PF_W = 3, 1, 2  # from <elf.h>


class _Mapping(NamedTuple):
    start: int
    end: int
    readable: bool
    offset: int
    path: str


def _mappings() -> list[_Mapping]:
    with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
        lines = maps.read().splitlines()
    found = []
    for line in lines:
        fields = line.split(None, 5)
        start, end = (int(bound, 16) for bound in fields[0].split("-"))
        path = fields[5].strip() if len(fields) > 5 else ""
        found.append(_Mapping(start, end, fields[1].startswith("r"), int(fields[2], 16), path))
    return found


def _writable_segments(path: str) -> tuple[int | None, list[tuple[int, int]]]:
    """Where the ELF file at ``path`` links its first segment if it is position-independent (None:
    it is loaded where it is linked), and ``(address, size)`` of each segment it loads writable
    (data, then bss), as linked."""
    with open(path, "rb") as elf:
        header = elf.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            raise _UnavailableError(f"{path} is not a 64-bit little-endian ELF file")
        (kind,) = struct.unpack_from("<H", header, 16)
        (table_at,) = struct.unpack_from("<Q", header, 32)
        entry_size, entries = struct.unpack_from("<HH", header, 54)
        elf.seek(table_at)
        table = elf.read(entry_size * entries)
    segments, first = [], None
    for index in range(entries):
        kind_of, flags, _, address, _, _, size, _ = struct.unpack_from("<IIQQQQQQ", table, index * entry_size)
        if kind_of == _PT_LOAD:
            first = address if first is None else first
            if flags & _PF_W:
                segments.append((address, size))
    if first is None:
        raise _UnavailableError(f"{path} loads no segment")
    return (first if kind == _ET_DYN else None), segments


def _interpreter_memory() -> Iterator[tuple[int, int]]:
    """``(start, end)`` of the writable segments (data and bss) of the interpreter's executable
    and of a libpython it loaded, where the handler table lives; exactly those, read from their ELF
    headers, so that no mapping another thread may unmap meanwhile is read."""
    mappings = _mappings()
    executable = os.path.realpath(sys.executable)
    paths = {m.path for m in mappings if m.path.startswith("/")}
    ours = sorted(p for p in paths if os.path.realpath(p) == executable or os.path.basename(p).startswith("libpython"))
    in_order = sorted(mappings)
    for path in ours:
        first, segments = _writable_segments(path)
        base = 0 if first is None else min(m.start for m in mappings if m.path == path and m.offset == 0) - first
        for address, size in segments:
            start, end = base + address, base + address + size
            covered = start
            for m in in_order:
                if m.start <= covered < m.end and m.readable:
                    covered = m.end
            if covered < end:
                raise _UnavailableError(f"{path}'s segment at {start:#x} is not mapped readable")
            yield start, end


def _words_holding(value: int) -> list[int]:
    """The addresses of the aligned words in the interpreter's memory that hold ``value``."""
    needle = value.to_bytes(_WORD, sys.byteorder)
    found = []
    try:
        for start, end in _interpreter_memory():
            memory = ctypes.string_at(start, end - start)
            at = memory.find(needle)
            while at != -1:
                if at % _WORD == 0:
                    found.append(start + at)
                at = memory.find(needle, at + 1)
    except TimeoutError:  # a signal handler's deadline, not the map's fault: the program's own
        raise
    except (OSError, ValueError, IndexError, struct.error) as exc:
        raise _UnavailableError(f"cannot read the interpreter's memory map: {type(exc).__name__}: {exc}") from None
    return found


def _view(address: int) -> memoryview:
    return memoryview((ctypes.c_char * _WORD).from_address(address)).cast("B").cast("Q")


def _put_back(current: Callable[..., Any]) -> None:
    """``signal.signal(SIGINT, current)``, done even when a SIGINT pending meanwhile makes it raise
    first (it runs pending handlers before it sets one); that interrupt is raised afterwards."""
    interrupt: BaseException | None = None
    for _ in range(3):
        try:
            _signal.signal(_SIGINT, current)
        except BaseException as exc:
            if isinstance(exc, Exception):  # refused: trying again changes nothing
                raise
            interrupt = interrupt or exc  # raised below, once the handler is back
            continue
        break
    if interrupt is not None:
        raise interrupt


_held: list[Any] = []
"""The frame of a SIGINT that arrived during the probe, passed on to the program's handler once
its own handler is back in place (a handler that sets another one must not be undone)."""


# The probe handlers hold a SIGINT, as rng_fork's own handler does while its code runs. They live
# as long as the process, with a reference each that is never given up: the probe writes them into
# the table uncounted, and a handler that another signal's handler sets meanwhile makes CPython
# drop a reference it believes the table owns.
def _first_probe(signum: int, frame: object) -> None:
    _held.append(frame)


def _second_probe(signum: int, frame: object) -> None:
    _held.append(frame)


_FIRST, _SECOND = id(_first_probe), id(_second_probe)


class _DisturbedError(Exception):
    """A SIGINT handler was set while the slot was looked for (by the program's handler during the
    scan, or by another signal's handler): it stays, and the slot is looked for again later."""


def _probe(current: Callable[..., Any]) -> memoryview:
    """Find and verify the slot; ``current``, the installed SIGINT handler, is put back however
    it ends (unless a handler was set meanwhile: then it stays and :class:`_DisturbedError` is
    raised), and a SIGINT that arrived meanwhile is passed on to it then."""
    _require_raw_memory_platform()
    if not sys.platform.startswith("linux"):
        raise _UnavailableError(f"the memory map is read from /proc/self/maps: Linux only, not {sys.platform}")
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        raise _UnavailableError("a free-threaded build: the table is written under no GIL")
    if ctypes.sizeof(ctypes.c_void_p) != _WORD:
        raise _UnavailableError(f"pointers are {ctypes.sizeof(ctypes.c_void_p)} bytes, not {_WORD}")
    # The scan first, with the program's handler in place: the probe handlers stand in for it
    # during a few calls only, not during the milliseconds of reading memory.
    candidates = _words_holding(id(current))
    counts = sys.getrefcount(_first_probe), sys.getrefcount(_second_probe)
    slot: memoryview | None = None
    installed = disturbed = False
    _held.clear()
    if _signal.getsignal(_SIGINT) is not current:  # the program's handler ran during the scan and set one
        raise _DisturbedError
    try:
        try:
            _signal.signal(_SIGINT, _first_probe)
        except ValueError as exc:  # not the main thread of the main interpreter
            raise _UnavailableError(str(exc)) from None
        installed = True
        candidates = [word for word in candidates if _view(word)[0] == _FIRST]
        _signal.signal(_SIGINT, _second_probe)
        candidates = [word for word in candidates if _view(word)[0] == _SECOND]
        if len(candidates) != 1:
            raise _UnavailableError(f"{len(candidates)} words follow signal.signal, not one")
        slot = _view(candidates[0])
        # Written, read back officially, and put back at once: the table's reference is second's.
        slot[0] = _FIRST
        took = _signal.getsignal(_SIGINT) is _first_probe
        slot[0] = _SECOND
        if not took or _signal.getsignal(_SIGINT) is not _second_probe:
            raise _UnavailableError("writing the word does not change signal.getsignal()")
    finally:
        # No call before this write: the first probe goes out even when an interrupt ends the probe.
        if slot is not None and slot[0] == _FIRST:
            slot[0] = _SECOND
        if installed:
            now = _signal.getsignal(_SIGINT)
            disturbed = now is not _first_probe and now is not _second_probe
            del now  # a reference the counts below must not see
            if disturbed:
                # Another signal's handler set one: it stays. CPython may have dropped a reference
                # to a probe that the table did not own: one more each, never to be freed.
                incref(_first_probe)
                incref(_second_probe)
            else:
                _put_back(current)
    assert slot is not None
    verdict = None
    if slot[0] != id(current) or (sys.getrefcount(_first_probe), sys.getrefcount(_second_probe)) != counts:
        verdict = _UnavailableError("the probes' reference counts or the restored handler differ from signal's")
    if _held:  # passed on once the verdict is in: the handler may set another
        arrived_in = _held[-1]
        _held.clear()
        try:
            current(_SIGINT, arrived_in)  # its KeyboardInterrupt, if it raises, comes out of here
        finally:
            arrived_in = None  # no cycle through this frame (the SIGINT may have arrived in it)
    if disturbed:
        raise _DisturbedError
    if verdict is not None:
        raise verdict
    return slot


def _probe_left_installed(current: Callable[..., Any]) -> None:
    """Put ``current`` back if an exception from another signal's handler cut the probe's own
    clean-up short and left a probe handler in place."""
    now = _signal.getsignal(_SIGINT)
    left = now is _first_probe or now is _second_probe
    del now
    if left:
        _held.clear()
        _put_back(current)


def find(current: Callable[..., Any]) -> tuple[memoryview | None, str | None]:
    """The SIGINT slot as a one-word view (or None) and what was found, for ``info()`` (None: a
    handler was set meanwhile, so look again later).

    Call in the main thread with ``current``, the installed handler, a Python callable;
    it is the installed handler again when this returns, unless another was set meanwhile.
    Only the probe's own failures are caught: an exception that another signal's handler
    raises meanwhile (a deadline, say) goes on to the program.
    """
    if _portable_requested():
        return None, "disabled: RNG_FORK_PORTABLE is set"
    try:
        slot = _probe(current)
    except _DisturbedError:
        return None, None
    except _UnavailableError as why:
        return None, f"unavailable: {why}"
    finally:
        _probe_left_installed(current)
    return slot, "active: the verified SIGINT slot, written instead of signal.signal"


# C functions called directly: a Python function in front of them could be interrupted before
# the count changes (CPython runs signal handlers as a function starts and as a call returns).
incref = ctypes.PYFUNCTYPE(None, ctypes.py_object)(("Py_IncRef", ctypes.pythonapi))
"""``incref(obj)``: count one more reference to ``obj``, one the table owns without the official API's help."""
decref = ctypes.PYFUNCTYPE(None, ctypes.py_object)(("Py_DecRef", ctypes.pythonapi))
"""``decref(obj)``: count one reference to ``obj`` less, one the table owned and gave up."""

incref(_first_probe)
incref(_second_probe)
