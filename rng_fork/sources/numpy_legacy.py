"""NumPy's legacy ``RandomState``: the global generator behind ``np.random.*`` and the user's own.

Saved through the verified raw-memory view of its MT19937 state and Gaussian
cache (see :mod:`._fastpath`), or NumPy's ``get_state``/``set_state`` where that
does not apply (another bit generator, ``RNG_FORK_PORTABLE=1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np

from . import _fastpath
from .base import Codec, InlineSavers, Part, Plain, Savers
from .plain import (
    C_INT,
    MT_RAW_BYTES,
    MT_WORDS,
    check_float_bits,
    float_bits,
    float_of,
    need,
    plain_float,
    raw_position,
    words_from_plain,
    words_to_plain,
)
from .python import ObjectSource

NumpyPart = tuple[bytes, int, bytes]
"""``(raw, has_gauss, gauss)``: raw is the 624 uint32 key words then the int32 position, little-endian;
has_gauss the C int NumPy keeps (nonzero: a Gaussian is cached, so 2 draws as 1 does), gauss the
cached double's 8 bytes."""

_KEY_BYTES = MT_WORDS * 4


class RandomStateCodec(Codec):
    """Parts of ``numpy.random.RandomState`` (on MT19937): :data:`NumpyPart`."""

    tag = "numpy.random.RandomState"

    def check(self, part: object) -> Part:
        if not isinstance(part, tuple) or len(part) != 3:
            raise TypeError("a RandomState state must be a (raw, has_gauss, gauss) tuple")
        raw, has_gauss, gauss = part
        if not isinstance(raw, bytes) or len(raw) != MT_RAW_BYTES:
            raise ValueError(f"a RandomState state needs {MT_RAW_BYTES} raw bytes")
        if not 0 <= raw_position(raw, _KEY_BYTES) <= MT_WORDS:
            raise ValueError(f"a RandomState pos must be in [0, {MT_WORDS}]")
        if type(has_gauss) is not int:
            raise TypeError(f"a RandomState has_gauss must be an int, not {type(has_gauss).__name__}")
        if not C_INT[0] <= has_gauss <= C_INT[1]:
            raise ValueError("a RandomState has_gauss must fit in a C int")
        check_float_bits(gauss, "a RandomState cached gaussian")
        return part

    def to_plain(self, part: Part) -> Plain:
        raw, has_gauss, gauss = cast(NumpyPart, part)
        return {
            "key": words_to_plain(raw[:_KEY_BYTES]),
            "pos": raw_position(raw, _KEY_BYTES),
            # A bool, as NumPy's own states have it; another int NumPy keeps, as it is.
            "has_gauss": bool(has_gauss) if has_gauss in (0, 1) else has_gauss,
            "gauss": float_of(gauss),
        }

    def from_plain(self, plain: Mapping[str, Any]) -> Part:
        key = words_from_plain(need(plain, "key", object), "key")
        pos = need(plain, "pos", int)
        if not 0 <= pos <= MT_WORDS:
            raise ValueError(f"a RandomState pos must be in [0, {MT_WORDS}]")
        has_gauss = int(need(plain, "has_gauss", (bool, int)))
        gauss = plain_float(plain, "gauss")
        return self.check((key + pos.to_bytes(4, "little", signed=True), has_gauss, float_bits(gauss)))


class RandomStateSource(ObjectSource):
    """A ``numpy.random.RandomState`` (the global one is ``np.random.mtrand._rand``), saved as a
    :data:`~._fastpath.NumpySaved`.

    Its legacy Gaussian cache is part of the state: ``np.random.randn`` after an
    odd number of draws restores exactly. Forks take it on any bit generator;
    snapshots hold MT19937 states only.

    Example::

        rs = np.random.RandomState(0)
        with fork_rng(generators=[rs]):
            rs.randn()
    """

    codec = RandomStateCodec()
    obj: np.random.RandomState

    def __init__(self, name: str, obj: np.random.RandomState) -> None:
        super().__init__(name, obj)
        self._save, self._load = _fastpath.numpy_savers(obj)

    def save(self) -> _fastpath.NumpySaved:
        return self._save()

    def load(self, saved: _fastpath.NumpySaved) -> None:
        self._load(saved)

    def savers(self) -> Savers:
        return self._save, self._load

    def _inline_savers(self) -> InlineSavers | None:
        return _fastpath.numpy_inline(self.obj, self._save, self._load)

    def part_of(self, saved: _fastpath.NumpySaved) -> Part:
        bit_generator, raw, has_gauss, gauss, _ = saved
        if raw is None:
            raise TypeError(f"{self.name}: {_fastpath.mt19937_only(type(bit_generator).__name__)}")
        return (raw, has_gauss, float_bits(gauss))

    def saved_of(self, part: Part) -> _fastpath.NumpySaved:
        raw, has_gauss, gauss = cast(NumpyPart, part)
        return (self.obj._bit_generator, raw, has_gauss, float_of(gauss), None)

    def check_target(self, part: Part) -> None:
        bit_generator = self.obj._bit_generator
        if not isinstance(bit_generator, np.random.MT19937):
            raise ValueError(_fastpath.mt19937_only(type(bit_generator).__name__))

    def seed(self, seed: int) -> None:
        bg = self.obj._bit_generator
        if isinstance(bg, np.random.MT19937):
            self.obj.seed(seed)
        else:  # RandomState.seed re-seeds MT19937 only; a fresh state of the same kind does the same
            self.obj.set_state({**type(bg)(seed).state, "has_gauss": 0, "gauss": 0.0})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "fast_path": _fastpath.fast_path_info()["numpy"]}
