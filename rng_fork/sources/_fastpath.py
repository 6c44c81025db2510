"""Raw-memory fast path for capturing and restoring two global RNG states.

This module snapshots and restores

* a Python :class:`random.Random` (the Mersenne Twister words and index kept
  in the C struct of ``_random.Random``, plus the ``gauss_next`` attribute), and
* a NumPy legacy :class:`numpy.random.RandomState` backed by ``MT19937`` (the
  bit generator's C state plus the legacy Gaussian cache ``has_gauss`` /
  ``gauss`` that lives inside the ``RandomState`` object itself),

by copying the generator memory directly instead of going through
``getstate``/``setstate`` and ``get_state``/``set_state``, which build and
parse hundreds of Python objects (tens of microseconds each).

Nothing about the memory layout is trusted blindly.  At import time the
offsets are *discovered* on private probe generators put into known states
through the official API, then *verified* both ways (reading raw memory must
match ``getstate``/``get_state``; writing raw memory must make
``getstate``/``get_state`` and the drawn streams match a reference generator
restored officially).  Any mismatch or exception disables the fast path for
that generator and the public names are bound to the portable functions,
which use only the official APIs.  The global generators are only *read*
during verification, never written.

Snapshot formats (identical for the fast and the portable functions, so
snapshots compare equal whichever path took them; plain tuples of builtins,
hence immutable, hashable, comparable and picklable without referencing this
module):

* :data:`PythonState` = ``(raw, gauss_next)``: ``raw`` is 2,500 bytes, a
  little-endian ``int32`` index followed by the 624 little-endian ``uint32``
  state words (the order of the C struct); ``gauss_next`` is the object held
  by the instance attribute (``None`` or a float).
* :data:`NumpyState` = ``(raw, has_gauss, gauss)``: ``raw`` is 2,500 bytes, the
  624 little-endian ``uint32`` key words followed by the little-endian
  ``int32`` position (the order of NumPy's ``mt19937_state``); ``has_gauss`` is
  an ``int`` and ``gauss`` a ``float``, as ``RandomState.get_state`` reports
  them.

Setting the environment variable ``RNG_FORK_PORTABLE`` to a true value (``1``,
``true``, ``yes``, ``on``) before import disables the fast path entirely (no
memory probing happens at all).  :data:`FAST_PYTHON`, :data:`FAST_NUMPY` and
:func:`fast_path_info` report what was selected and why.

Captured values are only meant to be fed back to the restore functions of
this module; apart from a length check they are not validated (a forged
index/position outside ``0..624`` would make the C generators read out of
bounds, exactly as it would through a raw ``ctypes`` write).
"""

from __future__ import annotations

import ctypes
import functools
import os
import random
import struct
import sys
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import numpy as np

from .base import InlineSavers
from .plain import MT_RAW_BYTES, MT_WORDS

__all__ = [
    "FAST_NUMPY",
    "FAST_PYTHON",
    "NumpySaved",
    "NumpyState",
    "PythonState",
    "capture_numpy",
    "capture_numpy_portable",
    "capture_python",
    "capture_python_portable",
    "fast_path_info",
    "mt19937_only",
    "numpy_inline",
    "numpy_savers",
    "numpy_state_of",
    "python_inline",
    "python_savers",
    "restore_numpy",
    "restore_numpy_portable",
    "restore_python",
    "restore_python_portable",
]

#: ``(raw index + 624 words, gauss_next)`` snapshot of a ``random.Random``.
PythonState = tuple[bytes, Any]
#: ``(raw 624 key words + pos, has_gauss, gauss)`` snapshot of a RandomState.
NumpyState = tuple[bytes, int, float]

_T = TypeVar("_T")

_MT_N = MT_WORDS
_RAW_LEN = MT_RAW_BYTES

# The canonical snapshot formats.  Little-endian is fixed (not native) so a
# pickled snapshot means the same thing on every machine; the fast path is
# only enabled where native order is little-endian, so raw memory *is* this.
_PY_RAW = struct.Struct("<i624I")  # CPython: int index; uint32_t state[624]
_NP_RAW = struct.Struct("<624Ii")  # NumPy: uint32_t key[624]; int pos
_WORDS = struct.Struct("<624I")
_I32 = struct.Struct("<i")
_F64 = struct.Struct("<d")

# Bound on the per-object view caches below.  They hold strong references
# (see _py_view), so they are cleared when full rather than growing; the
# library only ever uses the two global generators.
_CACHE_MAX = 8

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


class _UnavailableError(Exception):
    """Raised by discovery when the fast path must not be used."""


def _portable_requested() -> bool:
    """Return whether ``RNG_FORK_PORTABLE`` asks for the official APIs only."""
    return os.environ.get("RNG_FORK_PORTABLE", "").strip().lower() in _TRUE_WORDS


def _require_raw_memory_platform() -> None:
    """Check the preconditions shared by both fast paths.

    ``id()`` is only an address on CPython, and the canonical formats are
    little-endian, so raw memory is only reusable as-is on little-endian
    machines with 4-byte C ints.
    """
    if sys.implementation.name != "cpython":
        raise _UnavailableError(f"not CPython ({sys.implementation.name})")
    if sys.byteorder != "little":
        raise _UnavailableError("big-endian machine: raw memory is not the canonical format")
    if ctypes.sizeof(ctypes.c_int) != 4 or ctypes.sizeof(ctypes.c_uint32) != 4:
        raise _UnavailableError("C int is not 4 bytes")


def _int32_offsets(mem: bytes, value: int, start: int, skip: range) -> set[int]:
    """Return the 4-aligned offsets from ``start`` on in ``mem`` holding ``value``.

    C ints are 4-aligned, and ``start`` (the object header size) is too.
    Offsets inside ``skip`` are ignored (a region already attributed to
    another field, so its contents cannot produce a false candidate).
    """
    needle = _I32.pack(value)
    return {off for off in range(start, len(mem) - 3, 4) if off not in skip and mem[off : off + 4] == needle}


def _words(source: random.Random) -> tuple[int, ...]:
    """Draw 624 distinctive uint32 probe words from a private generator."""
    return _WORDS.unpack(source.randbytes(_MT_N * 4))


def _find_unique(mem: bytes, needle: bytes, what: str) -> int:
    """Return the only offset of ``needle`` in ``mem`` or raise _UnavailableError."""
    first = mem.find(needle)
    if first < 0:
        raise _UnavailableError(f"{what} not found in object memory")
    if mem.find(needle, first + 1) >= 0:
        raise _UnavailableError(f"{what} found more than once in object memory")
    return first


def _single(candidates: set[int] | None, what: str) -> int:
    """Return the only element of ``candidates`` or raise _UnavailableError."""
    if candidates is None or len(candidates) != 1:
        found = "none" if not candidates else sorted(candidates)
        raise _UnavailableError(f"{what}: expected one candidate offset, got {found}")
    return next(iter(candidates))


# --------------------------------------------------------------------------
# Python ``random.Random``
# --------------------------------------------------------------------------


def capture_python_portable(r: random.Random) -> PythonState:
    """Snapshot ``r`` through ``random.Random.getstate`` (official API).

    ``random.Random.getstate`` is called unbound so that the base Mersenne
    Twister state is captured even if a subclass overrides ``getstate``,
    exactly what the fast path reads.
    """
    _version, internal, gauss_next = random.Random.getstate(r)
    # internal = (word0, ..., word623, index); the canonical order puts the
    # index first, as in the C struct.
    return (_PY_RAW.pack(internal[_MT_N], *internal[:_MT_N]), gauss_next)


def restore_python_portable(r: random.Random, captured: PythonState) -> None:
    """Restore a :data:`PythonState` into ``r`` through ``random.Random.setstate``."""
    raw, gauss_next = captured
    values = _PY_RAW.unpack(raw)
    random.Random.setstate(r, (random.Random.VERSION, values[1:] + values[:1], gauss_next))


class _PyLayout(NamedTuple):
    """Verified location of ``int index; uint32_t state[624]`` in the object."""

    index_offset: int
    state_offset: int
    basicsize: int


# id(obj) -> (obj, view over its 2,500 raw bytes).  The strong reference to
# obj keeps the address valid for as long as the view is cached (the id can
# neither be freed nor reused while the entry exists).
_py_views: dict[int, tuple[random.Random, ctypes.Array[ctypes.c_char]]] = {}
_py_layout: _PyLayout | None = None


def _py_view(r: random.Random) -> ctypes.Array[ctypes.c_char]:
    """Return (and cache) a ctypes view over ``r``'s index and state words.

    A cached ``c_char`` array makes each copy a single GIL-holding memcpy:
    ``ctypes.string_at``/``ctypes.memmove`` cost ~0.6 us per call as foreign
    function calls (and ``memmove`` releases the GIL mid-copy).
    """
    entry = _py_views.get(id(r))
    if entry is not None and entry[0] is r:
        return entry[1]
    layout = _py_layout
    if layout is None:  # pragma: no cover - only bound when discovery succeeded
        raise RuntimeError("Python fast path is not available")
    # The struct layout is only known for the C type and its subclasses
    # (a subclass instance begins with the same struct); random.Random is
    # required for the gauss_next attribute, as in random.Random.getstate.
    if not isinstance(r, random.Random):
        raise TypeError(f"expected a random.Random instance, got {type(r).__name__}")
    view = (ctypes.c_char * _RAW_LEN).from_address(id(r) + layout.index_offset)
    if len(_py_views) >= _CACHE_MAX:
        _py_views.clear()
    _py_views[id(r)] = (r, view)
    return view


def _capture_python_fast(r: random.Random) -> PythonState:
    """Snapshot ``r`` by copying its C struct (same value as the portable one)."""
    entry = _py_views.get(id(r))
    view = entry[1] if entry is not None and entry[0] is r else _py_view(r)
    # gauss_next is a plain instance attribute set by random.Random.__init__ (not in the stubs).
    return (view.raw, r.gauss_next)  # type: ignore[attr-defined]


def _restore_python_fast(r: random.Random, captured: PythonState) -> None:
    """Restore a :data:`PythonState` into ``r`` by writing its C struct."""
    raw, gauss_next = captured
    # A short buffer would silently leave old words behind (c_char arrays
    # accept shorter input), so the length is the one check made here.
    if len(raw) != _RAW_LEN:
        raise ValueError(f"raw Python state must be {_RAW_LEN} bytes, got {len(raw)}")
    entry = _py_views.get(id(r))
    view = entry[1] if entry is not None and entry[0] is r else _py_view(r)
    view.raw = raw
    r.gauss_next = gauss_next  # type: ignore[attr-defined]


class _PySub(random.Random):
    """Subclass probe: its instances carry a ``__dict__`` after the C struct."""


def _discover_python() -> _PyLayout:
    """Locate ``index`` and ``state`` in ``_random.Random`` objects and verify.

    Steps:

    1. Probes (plain and subclass instances) are put into known states with
       ``random.Random.setstate``; the 2,496-byte little-endian word array
       must occur exactly once in the object memory (within the C type's
       ``__basicsize__``), at the same offset every time.
    2. The index is the only 4-aligned ``int32`` slot outside the words that
       equals the set index for every probe (indices 624, 0, 397, 1, 623, 2,
       so no constant field survives the intersection).  It must directly
       precede the words (one 2,500-byte view serves both).
    3. Reading: the raw capture of each probe equals the portable capture.
    4. Writing: raw states written into fresh probes must read back through
       ``getstate`` and must draw the same numbers (across a twist) as
       reference generators restored with ``setstate``.
    5. The global ``random._inst`` is checked read-only.
    """
    _require_raw_memory_platform()
    import _random

    basicsize = _random.Random.__basicsize__
    header = object.__basicsize__
    if basicsize < header + _RAW_LEN:
        raise _UnavailableError(f"_random.Random.__basicsize__ {basicsize} is too small")
    if not issubclass(random.Random, _random.Random):
        raise _UnavailableError("random.Random does not derive from _random.Random")

    source = random.Random(0x5EED)  # private source of distinctive probe values
    probes: list[random.Random] = [random.Random(1), _PySub(2), random.Random(3)]
    state_offset: int | None = None
    index_candidates: set[int] | None = None
    for k, index in enumerate((624, 0, 397, 1, 623, 2)):
        probe = probes[k % len(probes)]
        words = _words(source)
        random.Random.setstate(probe, (random.Random.VERSION, (*words, index), None))
        mem = ctypes.string_at(id(probe), basicsize)
        found = _find_unique(mem, _WORDS.pack(*words), "state words")
        if state_offset is not None and found != state_offset:
            raise _UnavailableError("state words move between probes")
        state_offset = found
        skip = range(state_offset, state_offset + _MT_N * 4)
        candidates = _int32_offsets(mem, index, header, skip)
        index_candidates = candidates if index_candidates is None else index_candidates & candidates
    if state_offset is None:  # pragma: no cover - the loop always runs
        raise _UnavailableError("no probe ran")
    index_offset = _single(index_candidates, "index")
    if index_offset + 4 != state_offset:
        raise _UnavailableError(f"index (+{index_offset}) does not precede state (+{state_offset})")

    global _py_layout
    _py_layout = _PyLayout(index_offset, state_offset, basicsize)
    try:
        _verify_python(probes, source)
    except BaseException:
        _py_layout = None
        raise
    finally:
        _py_views.clear()  # drop the probes: the cache is for real generators
    return _py_layout


def _verify_python(probes: list[random.Random], source: random.Random) -> None:
    """Verify reads and writes of the discovered layout (see _discover_python)."""
    for probe in probes:  # reads, in the states left by discovery
        probe.gauss_next = source.random()  # type: ignore[attr-defined]
        if _capture_python_fast(probe) != capture_python_portable(probe):
            raise _UnavailableError("raw read differs from getstate()")
    # Writes go to two objects not used so far (a plain one and a subclass).
    targets, reference = (random.Random(10), _PySub(20)), random.Random(0)
    for k, index in enumerate((5, 624, 0, 623, 311)):
        target = targets[k % 2]
        words = _words(source)
        gauss_next = None if k % 2 else source.gauss(0.0, 1.0)
        _restore_python_fast(target, (_PY_RAW.pack(index, *words), gauss_next))
        if random.Random.getstate(target) != (random.Random.VERSION, (*words, index), gauss_next):
            raise _UnavailableError("getstate() after a raw write differs")
        reference.setstate((random.Random.VERSION, (*words, index), gauss_next))
        # 700 words cross the 624-word regeneration whatever the index.
        if target.randbytes(2800) != reference.randbytes(2800) or target.gauss(0.0, 1.0) != reference.gauss(0.0, 1.0):
            raise _UnavailableError("stream after a raw write differs")
    glob: random.Random = random._inst  # the module's instance, behind random.random() etc.
    if _capture_python_fast(glob) != capture_python_portable(glob):
        raise _UnavailableError("raw read of random._inst differs from getstate()")


# --------------------------------------------------------------------------
# NumPy legacy ``RandomState``
# --------------------------------------------------------------------------


def _mt19937_of(rs: np.random.RandomState) -> Any:
    """Return ``rs``'s bit generator, which must be an ``MT19937``.

    The snapshot format only describes MT19937 (as does the legacy
    ``get_state`` tuple); a RandomState can wrap any BitGenerator.
    """
    bg = rs._bit_generator
    if not isinstance(bg, np.random.MT19937):
        raise TypeError(mt19937_only(type(bg).__name__))
    return bg


def mt19937_only(bit_generator: str) -> str:
    """The one rule for a RandomState that draws from another bit generator than MT19937, in words."""
    return (
        f"this RandomState draws from {bit_generator}: snapshots (and checkpoints) of a RandomState hold "
        "MT19937 states only; forks cover one on any bit generator"
    )


def capture_numpy_portable(rs: np.random.RandomState) -> NumpyState:
    """Snapshot ``rs`` through ``RandomState.get_state`` (official API)."""
    _mt19937_of(rs)
    return numpy_state_of(rs.get_state(legacy=False))


def numpy_state_of(state: dict[str, Any]) -> NumpyState:
    """The :data:`NumpyState` of an MT19937 RandomState's ``get_state(legacy=False)``."""
    inner = state["state"]
    key = np.asarray(inner["key"], dtype="<u4")
    return (key.tobytes() + _I32.pack(int(inner["pos"])), int(state["has_gauss"]), float(state["gauss"]))


def restore_numpy_portable(rs: np.random.RandomState, captured: NumpyState) -> None:
    """Restore an :data:`NumpyState` into ``rs`` through ``RandomState.set_state``."""
    raw, has_gauss, gauss = captured
    bg = _mt19937_of(rs)
    key = np.frombuffer(raw, dtype="<u4", count=_MT_N)
    (pos,) = _I32.unpack_from(raw, _MT_N * 4)
    rs.set_state(
        {
            # MT19937's state setter insists on its own class name.
            "bit_generator": type(bg).__name__,
            "state": {"key": key, "pos": pos},
            "has_gauss": has_gauss,
            "gauss": gauss,
        }
    )


class _NpLayout(NamedTuple):
    """Verified offsets inside a RandomState object (from ``id(rs)``)."""

    has_gauss_offset: int  # aug_bitgen_t.has_gauss
    gauss_offset: int  # aug_bitgen_t.gauss
    bitgen_offset: int  # bitgen_t _bitgen, whose first field is void *state
    basicsize: int


class _NpEntry(NamedTuple):
    """Cached views for one RandomState and the bit generator it had."""

    rs: Any  # strong reference: keeps the addresses below valid
    bg: Any  # the MT19937 whose embedded state ``mt`` views
    mt: ctypes.Array[ctypes.c_char]
    has_gauss: ctypes.c_int
    gauss: ctypes.c_double


_np_layout: _NpLayout | None = None
# id(rs) -> entry; like _py_views, each entry pins its objects (the
# RandomState and the bit generator whose memory the views point into).
_np_views: dict[int, _NpEntry] = {}


def _np_entry(rs: np.random.RandomState) -> _NpEntry | None:
    """Build (and cache) the views for ``rs``; None means: use the portable path.

    ``rs._bit_generator`` can change under us: ``RandomState.__init__``,
    ``np.random.set_bit_generator`` (consistent swaps) or plain attribute
    assignment (the attribute is ``public``), after which the C code keeps
    drawing from the *old* state while get_state/set_state use the new one.
    The fast path therefore checks that the state pointer in the object's own
    ``_bitgen`` copy is the bit generator's documented ``state_address``, and
    defers to the official API otherwise.  Callers re-check
    ``rs._bit_generator is entry.bg`` on every call.
    """
    layout = _np_layout
    if layout is None:  # pragma: no cover - only bound when discovery succeeded
        raise RuntimeError("NumPy fast path is not available")
    if not isinstance(rs, np.random.RandomState):
        raise TypeError(f"expected a numpy.random.RandomState, got {type(rs).__name__}")
    bg = _mt19937_of(rs)
    address = int(bg.ctypes.state_address)
    base = id(rs)
    # The state must be embedded in the bit generator object (as MT19937's
    # ``cdef mt19937_state rng_state`` is), so it lives exactly as long as bg.
    if not id(bg) <= address <= id(bg) + type(bg).__basicsize__ - _RAW_LEN:
        return None
    if ctypes.c_void_p.from_address(base + layout.bitgen_offset).value != address:
        return None
    entry = _NpEntry(
        rs,
        bg,
        (ctypes.c_char * _RAW_LEN).from_address(address),
        ctypes.c_int.from_address(base + layout.has_gauss_offset),
        ctypes.c_double.from_address(base + layout.gauss_offset),
    )
    if len(_np_views) >= _CACHE_MAX:
        _np_views.clear()
    _np_views[base] = entry
    return entry


def _capture_numpy_fast(rs: np.random.RandomState) -> NumpyState:
    """Snapshot ``rs`` by copying raw memory (same value as the portable one)."""
    e = _np_views.get(id(rs))
    if e is None or e.rs is not rs or rs._bit_generator is not e.bg:
        e = _np_entry(rs)
        if e is None:
            return capture_numpy_portable(rs)
    return (e.mt.raw, e.has_gauss.value, e.gauss.value)


def _restore_numpy_fast(rs: np.random.RandomState, captured: NumpyState) -> None:
    """Restore an :data:`NumpyState` into ``rs`` by writing raw memory."""
    raw, has_gauss, gauss = captured
    if len(raw) != _RAW_LEN:
        raise ValueError(f"raw NumPy state must be {_RAW_LEN} bytes, got {len(raw)}")
    e = _np_views.get(id(rs))
    if e is None or e.rs is not rs or rs._bit_generator is not e.bg:
        e = _np_entry(rs)
        if e is None:
            restore_numpy_portable(rs, captured)
            return
    # Same order as RandomState.set_state: cache first, then the MT state.
    e.gauss.value = gauss
    e.has_gauss.value = has_gauss
    e.mt.raw = raw


def _np_set(rs: np.random.RandomState, key: list[int], pos: int, has_gauss: int, gauss: float) -> None:
    """Put ``rs`` into a known state through the official ``set_state``."""
    rs.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np.array(key, dtype=np.uint32), "pos": pos},
            "has_gauss": has_gauss,
            "gauss": gauss,
        }
    )


def _discover_numpy() -> _NpLayout:
    """Locate the legacy Gaussian cache in RandomState objects and verify.

    Steps:

    1. Probes (plain and subclass instances) are put into known states with
       ``set_state``: distinctive keys, positions 624/0/311/1/623/17,
       ``has_gauss`` toggling 1/0/1/1/0/1 and distinctive ``gauss`` doubles.
       The MT19937 state at the documented ``ctypes.state_address`` must be
       ``key[624]`` then ``pos`` (and lie inside the bit generator object).
    2. ``gauss`` is the only offset (4-aligned) in ``__basicsize__`` bytes of
       the RandomState holding the set double in every probe; ``has_gauss`` is
       the only ``int32`` slot tracking the toggled flag.
    3. ``aug_bitgen_t`` is ``{bitgen_t *bit_generator; int has_gauss; ...}``:
       the pointer before ``has_gauss`` must point inside the same object (at
       ``_bitgen``), whose first field must be the state address.  This is
       what lets every cache fill check that the C code and
       ``_bit_generator`` agree.
    4. Reading: raw captures equal ``get_state``-based captures.
    5. Writing: raw writes into fresh probes read back through ``get_state``
       and draw the same numbers (``randn`` first returns the cached gauss)
       as references restored with ``set_state``.
    6. The global ``np.random.mtrand._rand`` is checked read-only.
    """
    _require_raw_memory_platform()
    rs_type = np.random.RandomState
    basicsize = int(rs_type.__basicsize__)
    header = object.__basicsize__
    ptr_size = ctypes.sizeof(ctypes.c_void_p)

    class _NpSub(np.random.RandomState):
        """Subclass probe: must share the base object layout."""

    source = random.Random(0xC0FFEE)
    probes: list[np.random.RandomState] = [rs_type(1), _NpSub(2), rs_type(3)]
    gauss_candidates: set[int] | None = None
    flag_candidates: set[int] | None = None
    patterns = ((624, 1), (0, 0), (311, 1), (1, 1), (623, 0), (17, 1))
    for k, (pos, has_gauss) in enumerate(patterns):
        probe = probes[k % len(probes)]
        key = list(_words(source))
        gauss = source.uniform(-1e6, 1e6)
        _np_set(probe, key, pos, has_gauss, gauss)
        bg = _mt19937_of(probe)
        address = int(bg.ctypes.state_address)
        if not id(bg) <= address <= id(bg) + type(bg).__basicsize__ - _RAW_LEN:
            raise _UnavailableError("MT19937 state is not embedded in the bit generator")
        if ctypes.string_at(address, _RAW_LEN) != _NP_RAW.pack(*key, pos):
            raise _UnavailableError("MT19937 state is not uint32 key[624] then int pos")
        mem = ctypes.string_at(id(probe), basicsize)
        needle = _F64.pack(gauss)
        found = {off for off in range(header, basicsize - 7, 4) if mem[off : off + 8] == needle}
        gauss_candidates = found if gauss_candidates is None else gauss_candidates & found
        flags = _int32_offsets(mem, has_gauss, header, range(0))
        flag_candidates = flags if flag_candidates is None else flag_candidates & flags
    gauss_offset = _single(gauss_candidates, "gauss")
    # The double itself cannot be the flag (it changes every probe anyway).
    has_gauss_offset = _single(
        {off for off in flag_candidates or () if not gauss_offset - 4 < off < gauss_offset + 8},
        "has_gauss",
    )
    pointer_offset = has_gauss_offset - ptr_size
    if pointer_offset < header or pointer_offset % ptr_size:
        raise _UnavailableError("no room for aug_bitgen_t.bit_generator before has_gauss")
    bitgen_offset: int | None = None
    for probe in probes:
        pointer = ctypes.c_void_p.from_address(id(probe) + pointer_offset).value or 0
        offset = pointer - id(probe)
        if not header <= offset <= basicsize - ptr_size:
            raise _UnavailableError("aug_bitgen_t.bit_generator does not point into the object")
        if bitgen_offset is not None and offset != bitgen_offset:
            raise _UnavailableError("_bitgen moves between probes")
        bitgen_offset = offset
        state_ptr = ctypes.c_void_p.from_address(pointer).value
        if state_ptr != int(_mt19937_of(probe).ctypes.state_address):
            raise _UnavailableError("_bitgen.state is not the bit generator's state address")
    if bitgen_offset is None:  # pragma: no cover - probes is not empty
        raise _UnavailableError("no probe ran")

    global _np_layout
    _np_layout = _NpLayout(has_gauss_offset, gauss_offset, bitgen_offset, basicsize)
    try:
        _verify_numpy(probes, _NpSub, source)
    except BaseException:
        _np_layout = None
        raise
    finally:
        _np_views.clear()  # drop the probes: the cache is for real generators
    return _np_layout


def _verify_numpy(
    probes: list[np.random.RandomState],
    sub: type[np.random.RandomState],
    source: random.Random,
) -> None:
    """Verify reads and writes of the discovered layout (see _discover_numpy)."""
    for probe in probes:  # reads, in the states left by discovery
        probe.randn()  # flips the Gaussian cache, moves the MT state
        if _capture_numpy_fast(probe) != capture_numpy_portable(probe):
            raise _UnavailableError("raw read differs from get_state()")
    # Writes go to two objects not used so far (a plain one and a subclass).
    targets, reference = (np.random.RandomState(10), sub(20)), np.random.RandomState(0)
    for k, pos in enumerate((5, 624, 0, 623, 311)):
        target = targets[k % 2]
        key = list(_words(source))
        has_gauss = (k + 1) % 2
        gauss = source.uniform(-10.0, 10.0)
        if _np_entry(target) is None:
            raise _UnavailableError("fresh RandomState rejected by the per-object checks")
        _restore_numpy_fast(target, (_NP_RAW.pack(*key, pos), has_gauss, gauss))
        st = target.get_state(legacy=False)
        if (
            st["state"]["key"].tolist() != key
            or st["state"]["pos"] != pos
            or st["has_gauss"] != has_gauss
            or st["gauss"] != gauss
        ):
            raise _UnavailableError("get_state() after a raw write differs")
        _np_set(reference, key, pos, has_gauss, gauss)
        # randn(3) uses the cache (if set) then fresh pairs; 700 uint32 words
        # cross the 624-word regeneration whatever the position.
        if (
            target.randn(3).tobytes() != reference.randn(3).tobytes()
            or target.randint(0, 2**32, size=700, dtype=np.uint64).tobytes()
            != reference.randint(0, 2**32, size=700, dtype=np.uint64).tobytes()
        ):
            raise _UnavailableError("stream after a raw write differs")
    glob = np.random.mtrand._rand
    if isinstance(glob._bit_generator, np.random.MT19937) and _capture_numpy_fast(glob) != capture_numpy_portable(glob):
        raise _UnavailableError("raw read of np.random.mtrand._rand differs from get_state()")


# --------------------------------------------------------------------------
# Selection at import time
# --------------------------------------------------------------------------


def _select(discover: Callable[[], _T]) -> tuple[_T | None, str]:
    """Run a discovery; return its layout and a description of the outcome.

    Every exception counts as "unavailable": a fast path that cannot be
    verified must never be used.
    """
    if _portable_requested():
        return None, "disabled: RNG_FORK_PORTABLE is set"
    try:
        layout = discover()
    except Exception as exc:  # noqa: BLE001 - any failure must mean "do not use the fast path"
        return None, f"unavailable: {type(exc).__name__}: {exc}"
    return layout, f"active: {layout!r}"


_PY_SELECTED, _PY_INFO = _select(_discover_python)
_NP_SELECTED, _NP_INFO = _select(_discover_numpy)

#: True when capture_python/restore_python use verified raw memory copies.
FAST_PYTHON: bool = _PY_SELECTED is not None
#: True when capture_numpy/restore_numpy use verified raw memory copies.
FAST_NUMPY: bool = _NP_SELECTED is not None

capture_python: Callable[[random.Random], PythonState]
restore_python: Callable[[random.Random, PythonState], None]
capture_numpy: Callable[[np.random.RandomState], NumpyState]
restore_numpy: Callable[[np.random.RandomState, NumpyState], None]

# The public names are bound once, here, so a call costs no dispatch.
if FAST_PYTHON:
    capture_python, restore_python = _capture_python_fast, _restore_python_fast
else:
    capture_python, restore_python = capture_python_portable, restore_python_portable
if FAST_NUMPY:
    capture_numpy, restore_numpy = _capture_numpy_fast, _restore_numpy_fast
else:
    capture_numpy, restore_numpy = capture_numpy_portable, restore_numpy_portable


PythonSavers = tuple[Callable[[], PythonState], Callable[[PythonState], None]]

NumpySaved = tuple[Any, bytes | None, int, float, dict[str, Any] | None]
"""What :func:`numpy_savers` saves, on either path: ``(bit_generator, raw, has_gauss, gauss, state)``.

``bit_generator`` is the object the RandomState draws from. On MT19937, ``raw``,
``has_gauss`` and ``gauss`` are its :data:`NumpyState` and ``state`` is None;
on any other bit generator ``raw`` is None and ``state`` is NumPy's
``get_state(legacy=False)``."""


def python_savers(r: random.Random) -> PythonSavers:
    """``(save, load)`` bound to ``r``: the cheapest copy of its state out and back in.

    Both paths save a :data:`PythonState`; ``load`` takes only what ``save``
    returned, so it skips the checks a restore makes.
    """
    if not FAST_PYTHON:
        return functools.partial(capture_python_portable, r), functools.partial(restore_python_portable, r)
    # The closures hold r, which keeps the view's memory valid.
    view = _py_view(r)

    def save() -> PythonState:
        return (view.raw, r.gauss_next)  # type: ignore[attr-defined]

    def load(saved: PythonState) -> None:
        view.raw = saved[0]
        r.gauss_next = saved[1]  # type: ignore[attr-defined]

    return save, load


def python_inline(r: random.Random) -> InlineSavers | None:
    """:func:`python_savers`' fast pair as code (see :class:`~.base.InlineSavers`); None off the fast path."""
    if not FAST_PYTHON:
        return None
    return InlineSavers(
        "({view}.raw, {r}.gauss_next)", "{view}.raw = {value}[0]\n{r}.gauss_next = {value}[1]",
        {"view": _py_view(r), "r": r},
    )


def numpy_savers(rs: np.random.RandomState) -> tuple[Callable[[], NumpySaved], Callable[[NumpySaved], None]]:
    """``(save, load)`` bound to ``rs``, as :func:`python_savers`, saving a :data:`NumpySaved`.

    Unlike the snapshot functions these take any bit generator (through the
    official ``get_state``/``set_state`` where the fast path does not apply) and save
    which bit generator object ``rs`` draws from: a block that swaps it
    (``np.random.set_bit_generator``) finds the original one put back.
    """
    entry = _np_entry(rs) if FAST_NUMPY and isinstance(rs._bit_generator, np.random.MT19937) else None

    def save_official() -> NumpySaved:
        bg = rs._bit_generator
        state = rs.get_state(legacy=False)
        if isinstance(bg, np.random.MT19937):
            return (bg, *numpy_state_of(state), None)
        return (bg, None, 0, 0.0, state)

    def load_official(saved: NumpySaved) -> None:
        bg, raw, has_gauss, gauss, state = saved
        if rs._bit_generator is not bg:
            np.random.RandomState.__init__(rs, bg)  # what set_bit_generator does for the global
        if raw is None:
            assert state is not None  # saved from another bit generator than MT19937
            rs.set_state(state)
        else:
            restore_numpy_portable(rs, (raw, has_gauss, gauss))

    if entry is None:
        return save_official, load_official
    fast_bg, mt, cached, value = entry.bg, entry.mt, entry.has_gauss, entry.gauss

    def save() -> NumpySaved:
        if rs._bit_generator is not fast_bg:
            return save_official()
        return (fast_bg, mt.raw, cached.value, value.value, None)

    def load(saved: NumpySaved) -> None:
        if saved[0] is not fast_bg or saved[1] is None:
            load_official(saved)
            return
        if rs._bit_generator is not fast_bg:
            np.random.RandomState.__init__(rs, fast_bg)
        # Same order as RandomState.set_state: cache first, then the MT state.
        value.value = saved[3]
        cached.value = saved[2]
        mt.raw = saved[1]

    return save, load


def numpy_inline(
    rs: np.random.RandomState, save: Callable[[], NumpySaved], load: Callable[[NumpySaved], None],
) -> InlineSavers | None:
    """``numpy_savers(rs)``, given as ``save`` and ``load``, as code: the raw copies written out,
    and a call to ``save`` or ``load`` wherever they would not apply (another bit generator
    now or in the saved value). None where ``rs`` has no verified views."""
    entry = _np_views.get(id(rs))
    if entry is None or entry.rs is not rs or not FAST_NUMPY:
        return None
    names = {"rs": rs, "bg": entry.bg, "mt": entry.mt, "cached": entry.has_gauss, "gauss": entry.gauss}
    return InlineSavers(
        "({bg}, {mt}.raw, {cached}.value, {gauss}.value, None) if {rs}._bit_generator is {bg} else {save}()",
        # Same order as RandomState.set_state: cache first, then the MT state.
        "if {value}[0] is {bg} and {value}[1] is not None and {rs}._bit_generator is {bg}:\n"
        "    {gauss}.value = {value}[3]\n    {cached}.value = {value}[2]\n    {mt}.raw = {value}[1]\n"
        "else:\n    {load}({value})",
        {**names, "save": save, "load": load},
    )


def fast_path_info() -> dict[str, str]:
    """Describe the selected path for each generator.

    Each value starts with ``"active"`` (followed by the verified layout),
    ``"disabled"`` (``RNG_FORK_PORTABLE``) or ``"unavailable"`` (followed by
    the reason discovery or verification failed).
    """
    return {"python": _PY_INFO, "numpy": _NP_INFO}
