"""Python's ``random.Random``: the global generator (``random._inst``) and the user's own.

A plain ``random.Random`` is saved through the verified raw-memory view of its
Mersenne Twister (see :mod:`._fastpath`), one of its own devising (a subclass
with its own ``getstate``/``setstate``) through those methods.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Hashable, Mapping
from typing import Any, cast

from . import _fastpath
from .base import Codec, InlineSavers, Part, Plain, PlainCodec, RngSource, Savers
from .plain import (
    MT_RAW_BYTES,
    MT_WORDS,
    check_float_bits,
    float_bits,
    float_of,
    need,
    raw_position,
    words_from_plain,
    words_to_plain,
)

PythonPart = tuple[bytes, Any]
"""``(raw, gauss_next)``: raw is the int32 index then the 624 uint32 words, little-endian; gauss_next
is None, an int or a float's 8 bytes (``random.gauss`` returns ``mu + gauss_next * sigma``, of either type).
The saved form, :data:`~._fastpath.PythonState`, has the same shape with gauss_next as it is."""


def _python_part(saved: _fastpath.PythonState, name: str) -> PythonPart:
    raw, gauss = saved
    if type(gauss) is float:
        return (raw, float_bits(gauss))
    if gauss is None or isinstance(gauss, int):  # a bool draws as the int it equals
        return (raw, None if gauss is None else int(gauss))
    raise TypeError(f"{name}: gauss_next is a {type(gauss).__name__}; snapshots keep None, an int or a float")


def _python_saved(part: Part) -> _fastpath.PythonState:
    raw, gauss = cast(PythonPart, part)
    return (raw, float_of(gauss) if isinstance(gauss, bytes) else gauss)


class PythonRandomCodec(Codec):
    """Parts of ``random.Random``: :data:`PythonPart`."""

    tag = "random.Random"

    def check(self, part: object) -> Part:
        if not isinstance(part, tuple) or len(part) != 2:
            raise TypeError("a random.Random state must be a (raw, gauss_next) tuple")
        raw, gauss = part
        if not isinstance(raw, bytes) or len(raw) != MT_RAW_BYTES:
            raise ValueError(f"a random.Random state needs {MT_RAW_BYTES} raw bytes")
        if not 0 <= raw_position(raw, 0) <= MT_WORDS:
            raise ValueError(f"a random.Random index must be in [0, {MT_WORDS}]")
        if not (gauss is None or type(gauss) is int):
            check_float_bits(gauss, "a random.Random gauss_next that is not None or an int")
        return part

    def to_plain(self, part: Part) -> Plain:
        raw, gauss = _python_saved(part)
        return {
            "words": words_to_plain(raw[4:]),
            "index": raw_position(raw, 0),
            "has_gauss": gauss is not None,
            "gauss": 0.0 if gauss is None else gauss,
        }

    def from_plain(self, plain: Mapping[str, Any]) -> Part:
        words = words_from_plain(need(plain, "words", object), "words")
        index = need(plain, "index", int)
        if not 0 <= index <= MT_WORDS:
            raise ValueError(f"a random.Random index must be in [0, {MT_WORDS}]")
        has_gauss = need(plain, "has_gauss", bool)
        gauss = need(plain, "gauss", (int, float))  # an int stays one: random.gauss would return an int
        raw = index.to_bytes(4, "little", signed=True) + words
        return self.check(_python_part((raw, gauss if has_gauss else None), "gauss"))


class ObjectSource(RngSource):
    """A source bound to one generator object, which is what it stands for."""

    def __init__(self, name: str, obj: Any) -> None:
        self.name = name
        self.obj = obj

    def identity(self) -> Hashable:
        return ("object", id(self.obj))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "object": type(self.obj).__qualname__}


class PythonRandomSource(ObjectSource):
    """A ``random.Random`` (the global one is ``random._inst``), saved as a :data:`~._fastpath.PythonState`.

    Example::

        rng = random.Random(0)
        with fork_rng(generators=[rng]):
            rng.random()
    """

    codec = PythonRandomCodec()
    obj: random.Random

    def save(self) -> _fastpath.PythonState:
        return _fastpath.capture_python(self.obj)

    def load(self, saved: _fastpath.PythonState) -> None:
        _fastpath.restore_python(self.obj, saved)

    def savers(self) -> Savers:
        return _fastpath.python_savers(self.obj)

    def _inline_savers(self) -> InlineSavers | None:
        return _fastpath.python_inline(self.obj)

    def part_of(self, saved: _fastpath.PythonState) -> Part:
        return _python_part(saved, self.name)

    def saved_of(self, part: Part) -> _fastpath.PythonState:
        return _python_saved(part)

    def seed(self, seed: int) -> None:
        self.obj.seed(seed)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "fast_path": _fastpath.fast_path_info()["python"]}


def _scratch_instance(obj: random.Random) -> random.Random:
    """A new instance of ``obj``'s class, built without its ``__init__``, holding copies of its attributes.

    An attribute that cannot be deep-copied (a lock, say) is shared: ``setstate`` is not
    expected to change such a thing.
    """
    cls = type(obj)
    try:
        scratch = cls.__new__(cls)
    except Exception as exc:  # noqa: BLE001 - any failure means: no scratch instance to try states on
        raise TypeError(f"cannot make a scratch {cls.__qualname__} to check a state on: {exc}") from None
    attributes = vars(scratch)
    for name, value in vars(obj).items():
        attributes[name] = value
        with contextlib.suppress(Exception):  # not copyable: shared, see above
            attributes[name] = copy.deepcopy(value)
    return scratch


class RandomSubclassSource(ObjectSource):
    """A ``random.Random`` subclass with its own ``getstate``/``setstate``: a generator
    "of your own devising" (as the random module's docs put it), or one that keeps
    more than the Mersenne Twister. Saved and restored through those methods.

    Example::

        class Lcg(random.Random):
            def random(self): ...
            def getstate(self): return self.x
            def setstate(self, x): self.x = x

        with fork_rng(generators=[Lcg()]): ...
    """

    codec = PlainCodec("random.Random.getstate")
    obj: random.Random

    def _kind(self) -> str:
        # The qualified name alone: a class defined in a script is __main__.X there and
        # module.X where the resumed run imports it.
        return type(self.obj).__qualname__

    def save(self) -> Any:
        return self.obj.getstate()

    def load(self, saved: Any) -> None:
        self.obj.setstate(saved)

    def savers(self) -> Savers:
        return self.obj.getstate, self.obj.setstate

    def part_of(self, saved: Any) -> Part:
        # Tagged with the class: each subclass's state has a shape of its own. The state
        # itself must be hashable, so that the snapshot cannot change after the fact.
        return (self._kind(), self.codec.check(saved))

    def saved_of(self, part: Part) -> Any:
        return cast(tuple[str, Any], part)[1]

    def check_target(self, part: Part) -> None:
        if not (isinstance(part, tuple) and len(part) == 2):
            raise ValueError("expected a (class, state) pair")
        if part[0] != self._kind():
            raise ValueError(f"a {part[0]} state cannot go into a {self._kind()}")
        # Only the class's own setstate knows its states: it tries this one on a scratch
        # instance first, so that one it refuses changes nothing.
        scratch = _scratch_instance(self.obj)
        try:
            scratch.setstate(part[1])
        except Exception as exc:  # noqa: BLE001 - whatever setstate raises, the state is not one it takes
            raise ValueError(f"{self._kind()}.setstate refuses this state: {type(exc).__name__}: {exc}") from None

    def seed(self, seed: int) -> None:
        self.obj.seed(seed)


def python_source(name: str, obj: random.Random) -> RngSource:
    """The source for a ``random.Random``: through its own ``getstate``/``setstate`` if it has them."""
    kind = type(obj)
    if kind.getstate is not random.Random.getstate or kind.setstate is not random.Random.setstate:
        return RandomSubclassSource(name, obj)
    return PythonRandomSource(name, obj)
