"""Raw-memory view of torch's CPU generators (the default one and the user's).

``torch.Generator.get_state`` serializes the generator into a new 5,056-byte
tensor and ``set_state`` parses and checks one: together about a third of a
fork. The generator itself (a C++ ``CPUGeneratorImpl``) keeps its whole state
in one stretch of memory: the Mersenne Twister ``mt19937_data_pod`` (seed,
``left_``, ``seeded_``, ``next_``, 624 words) and the two cached normal
samples (``std::optional<float>``, ``std::optional<double>``), declared last.
Copying that stretch out and back in is what this module does, as
:mod:`._fastpath` does for Python's and NumPy's generators.

Nothing is trusted blindly. At import the layout is *discovered* on private
probe generators put into known states through the official API (a seed
whose Mersenne Twister words are computed here, a normal draw that fills the
cache), then *verified*: raw copies moved between generators must give the
same ``get_state()`` and the same draws, and a raw read of
``torch.default_generator`` (read only) must equal its ``get_state()``. Any
mismatch or exception leaves the view off and every generator goes through
``get_state``/``set_state``; so does ``RNG_FORK_PORTABLE=1``, which skips the
probing altogether. :func:`torch_view_info` says which and why.

A view is made only for a generator whose C++ object has the vtable of the
verified probes (a ``CPUGeneratorImpl``); any other is left to the official API.

What it does not protect against: the copy holds the GIL but not the
generator's mutex, so a torch operation drawing from the same generator in
another thread without the GIL (an op running inside ``torch.set_num_threads``
workers, or any op in a thread that released the GIL) can interleave with a
copy and leave a torn state, which ``get_state``/``set_state`` (taking the
mutex) would not.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from typing import NamedTuple

import torch

from ._fastpath import _require_raw_memory_platform, _select, _UnavailableError

__all__ = ["FAST_TORCH", "RawView", "from_official", "raw_view", "to_official", "torch_view_info"]

RawView = ctypes.Array[ctypes.c_char]
"""A view over one CPU generator's state bytes: ``view.raw`` copies them out, ``view.raw = b`` back in."""

_MT_N = 624
_PTR = ctypes.sizeof(ctypes.c_void_p)
_U64 = struct.Struct("<Q")
_ENGINE = struct.Struct("<QiBxxxI624I")  # mt19937_data_pod: seed_, left_, seeded_, next_, state_
_ENGINE_SIZE = (_ENGINE.size + 7) // 8 * 8  # followed by the 8-aligned optional<float>
_DOUBLE = struct.Struct("<d?")  # std::optional<double>: the value, then whether it is engaged
_SCAN = 256
"""How far into the C++ object the seed is looked for: past the base ``GeneratorImpl`` (vtable,
refcounts, mutex, device, key set, Python object), well inside the 2.5 kB of state after it."""


class _TorchLayout(NamedTuple):
    """Where a ``torch.Generator`` keeps the pointer to its C++ object, and where that object
    keeps its state."""

    impl_pointer_offset: int
    state_offset: int
    state_size: int
    vtable: int


_layout: _TorchLayout | None = None


def _impl_of(generator: torch.Generator, layout: _TorchLayout) -> int:
    return ctypes.c_void_p.from_address(id(generator) + layout.impl_pointer_offset).value or 0


def _view_at(impl: int, layout: _TorchLayout) -> RawView:
    return (ctypes.c_char * layout.state_size).from_address(impl + layout.state_offset)


def raw_view(generator: torch.Generator) -> RawView | None:
    """A view over ``generator``'s state bytes, or None where the view is off or does not apply.

    The view keeps ``generator`` alive, so its memory stays valid as long as the view.

    Example::

        view = raw_view(torch.default_generator)
        saved = view.raw          # the state, copied out
        torch.rand(3)
        view.raw = saved          # and back in: torch.rand(3) draws the same again
    """
    layout = _layout
    if layout is None or type(generator) is not torch.Generator or generator.device.type != "cpu":
        return None
    impl = _impl_of(generator, layout)
    if not impl or ctypes.c_void_p.from_address(impl).value != layout.vtable:
        return None
    view = _view_at(impl, layout)
    # The view keeps the generator, and with it the memory it points to, alive.
    setattr(view, "generator", generator)  # noqa: B010 - not a declared attribute of ctypes arrays
    return view


# A private generator turns raw bytes into torch's official state tensor and back, under a lock.
_scratch = torch.Generator()
_scratch_lock = threading.Lock()


def to_official(raw: bytes) -> torch.Tensor:
    """The ``get_state()`` tensor of a generator holding the raw state ``raw``."""
    view = raw_view(_scratch)
    assert view is not None, "only called where the view is on"
    with _scratch_lock:
        view.raw = raw
        return _scratch.get_state()


def from_official(state: torch.Tensor) -> bytes:
    """The raw state of a generator given ``state`` with ``set_state`` (which checks it)."""
    view = raw_view(_scratch)
    assert view is not None, "only called where the view is on"
    with _scratch_lock:
        _scratch.set_state(state)
        return view.raw


def _seeded_words(seed: int) -> list[int]:
    """The Mersenne Twister words torch's ``manual_seed(seed)`` leaves (``init_with_uint32``)."""
    words = [seed & 0xFFFFFFFF]
    for j in range(1, _MT_N):
        previous = words[-1]
        words.append((1812433253 * (previous ^ (previous >> 30)) + j) & 0xFFFFFFFF)
    return words


def _discover() -> _TorchLayout:
    """Locate the state in ``CPUGeneratorImpl`` objects and verify it.

    1. ``torch.Generator`` objects hold one pointer besides the object header
       (and the weak reference list): ``at::Generator``'s pointer to the C++ object.
    2. Probes seeded with distinctive 64-bit seeds: the seed occurs once in the
       first bytes of the object, at the same offset each time, followed by
       ``left_ = 1``, ``seeded_``, ``next_ = 0`` and the 624 words the seed gives.
    3. A normal draw fills the cached double (engaged flag set, the value the
       next draw returns), found right after the engine and the cached float;
       the stretch ends with it.
    4. Every probe's C++ object has the same vtable as the default generator's.
    5. Reads and writes are verified (see :func:`_verify`).
    """
    _require_raw_memory_platform()
    kind = torch.Generator
    header = object.__basicsize__
    slots = [
        off for off in range(header, kind.__basicsize__, _PTR)
        if off not in (kind.__weakrefoffset__, kind.__dictoffset__)
    ]
    if len(slots) != 1:
        raise _UnavailableError(f"torch.Generator holds {len(slots)} fields besides its header, not one pointer")
    pointer_offset = slots[0]
    seeds = (0x5EED_0123_4567_89AB, 0x0BAD_F00D_1234_5678, 0x7FFF_FFFF_0000_0001)
    probes = [torch.Generator() for _ in seeds]
    state_offset: int | None = None
    vtables: set[int] = set()
    for probe, seed in zip(probes, seeds, strict=True):
        probe.manual_seed(seed)
        impl = ctypes.c_void_p.from_address(id(probe) + pointer_offset).value
        if not impl or impl % _PTR:
            raise _UnavailableError("torch.Generator does not point to an aligned C++ object")
        vtables.add(ctypes.c_void_p.from_address(impl).value or 0)
        head = ctypes.string_at(impl, _SCAN)
        needle = _U64.pack(seed)
        found = head.find(needle)
        if found < 0 or found % 8 or head.find(needle, found + 1) >= 0:
            raise _UnavailableError("the seed is not found once, aligned, in the generator object")
        if state_offset is not None and found != state_offset:
            raise _UnavailableError("the seed moves between generator objects")
        state_offset = found
        engine = _ENGINE.unpack(ctypes.string_at(impl + found, _ENGINE.size))
        if engine[:4] != (seed, 1, 1, 0) or list(engine[4:]) != _seeded_words(seed):
            raise _UnavailableError("the seeded engine is not mt19937_data_pod as torch declares it")
    if state_offset is None:  # pragma: no cover - the loop always runs
        raise _UnavailableError("no probe ran")
    default_impl = ctypes.c_void_p.from_address(id(torch.default_generator) + pointer_offset).value or 0
    vtables.add(ctypes.c_void_p.from_address(default_impl).value or 0 if default_impl else 0)
    if len(vtables) != 1 or 0 in vtables:
        raise _UnavailableError("the generator objects do not share one C++ type")
    double_offset = _ENGINE_SIZE + 8  # after the engine and the optional<float>
    for probe in probes:
        impl = ctypes.c_void_p.from_address(id(probe) + pointer_offset).value or 0
        torch.randn(1, dtype=torch.float64, generator=probe)  # draws a pair, caches the second
        value, engaged = _DOUBLE.unpack(ctypes.string_at(impl + state_offset + double_offset, _DOUBLE.size))
        cached = float(torch.randn(1, dtype=torch.float64, generator=probe))
        _, still = _DOUBLE.unpack(ctypes.string_at(impl + state_offset + double_offset, _DOUBLE.size))
        if not engaged or still or value != cached:
            raise _UnavailableError("the cached normal sample is not where torch declares it")
    global _layout
    _layout = _TorchLayout(pointer_offset, state_offset, double_offset + 16, vtables.pop())
    try:
        _verify(probes)
    except BaseException:
        _layout = None
        raise
    return _layout


def _draws(generator: torch.Generator) -> bytes:
    # The cached normal first, then 700 words: across the 624-word regeneration wherever it stands.
    return (
        torch.randn(3, dtype=torch.float64, generator=generator).numpy().tobytes()
        + torch.randint(0, 2**62, (700,), generator=generator).numpy().tobytes()
        + torch.rand(5, generator=generator).numpy().tobytes()
    )


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.numel() == b.numel() and a.numpy().tobytes() == b.numpy().tobytes()


def _with_cached_float(state: torch.Tensor, value: float) -> torch.Tensor:
    """``state`` with its cached float normal set, in torch's CPUGeneratorImplState layout (checked
    by what the raw view then reads)."""
    data = bytearray(state.numpy().tobytes())
    struct.pack_into("<f?", data, len(data) - 8, value, True)
    return torch.frombuffer(data, dtype=torch.uint8).clone()


def _verify(probes: list[torch.Generator]) -> None:
    """Raw copies between generators must give torch's own states and draws."""
    layout = _layout
    assert layout is not None
    source = probes[0]
    target = torch.Generator()
    states: list[torch.Tensor] = []
    for draws in (0, 1, 313, 624, 1000):
        torch.randint(0, 2**31, (draws,), generator=source)
        states.append(source.get_state())
        torch.randn(1, dtype=torch.float64, generator=source)  # leaves a cached normal
        states.append(source.get_state())
    states.append(_with_cached_float(states[-1], 0.828125))
    for state in states:
        source.set_state(state)
        view, other = raw_view(source), raw_view(target)
        if view is None or other is None:
            raise _UnavailableError("a fresh generator is refused by the per-object checks")
        raw = view.raw
        other.raw = raw
        if not _same(target.get_state(), state) or not _same(source.get_state(), state):
            raise _UnavailableError("get_state() after a raw copy differs")
        if _draws(target) != _draws(source):
            raise _UnavailableError("draws after a raw copy differ")
        view.raw = raw  # back, after drawing
        if not _same(source.get_state(), state):
            raise _UnavailableError("get_state() after a raw restore differs")
    cached = raw_view(source)
    assert cached is not None
    source.set_state(states[-1])
    if struct.unpack_from("<f?", cached.raw, _ENGINE_SIZE) != (0.828125, True):
        raise _UnavailableError("the cached float normal sample is not where torch declares it")
    glob = raw_view(torch.default_generator)
    if glob is None:
        raise _UnavailableError("torch.default_generator is refused by the per-object checks")
    target_view = raw_view(target)
    assert target_view is not None
    target_view.raw = glob.raw
    if not _same(target.get_state(), torch.default_generator.get_state()):
        raise _UnavailableError("raw read of torch.default_generator differs from get_state()")


_TORCH_SELECTED, _TORCH_INFO = _select(_discover)

#: True when CPU generators are saved and loaded through verified raw views.
FAST_TORCH: bool = _TORCH_SELECTED is not None


def torch_view_info() -> str:
    """``"active: ..."`` with the verified layout, ``"disabled: ..."`` or ``"unavailable: <why>"``."""
    return _TORCH_INFO
