"""The adapter every RNG family implements, and the codec that describes its state.

A *source* is one generator that rng_fork can save and put back: Python's global
``random``, NumPy's legacy global generator, torch's CPU generator, one CUDA
device, or a generator object the user passes in. Each has the same four verbs:
``available``, ``capture``, ``restore`` and ``seed``.

A *codec* describes the format of what ``capture`` returns (a *part*): how to
validate one, and how to turn it into plain checkpoint data and back. Parts are
immutable values that compare with ``==``, hash and pickle, so a snapshot is a
value, not a view of live generators.
"""

from __future__ import annotations

import operator
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Protocol, cast

import numpy as np
import torch

Part = Hashable
"""What a source's ``capture`` returns: immutable, comparable, picklable."""

Plain = dict[str, Any]
"""A part as checkpoint data: tensors, ints, floats, bools, strings, lists and dicts."""

Savers = tuple[Callable[[], Any], Callable[[Any], object]]
"""``(save, load)`` of one generator: ``load(save())`` puts its state back."""


class Codec(ABC):
    """How one kind of part is validated and converted to plain data and back.

    ``tag`` names the format inside ``state_dict()``; it must be unique.
    """

    tag: str

    @abstractmethod
    def check(self, part: object) -> Part:
        """Return ``part`` if it is well formed; raise ``TypeError``/``ValueError`` if not."""

    @abstractmethod
    def to_plain(self, part: Part) -> Plain:
        """Convert a checked part to plain checkpoint data (without the tag)."""

    @abstractmethod
    def from_plain(self, plain: Mapping[str, Any]) -> Part:
        """Convert plain data back to a checked part; raise on anything malformed."""


class PlainCodec(Codec):
    """The codec of sources whose parts are already plain, hashable values.

    Example: a source holding a JAX key as a tuple of ints can use
    ``PlainCodec("jax")`` and need not write one of its own.
    """

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def check(self, part: object) -> Part:
        value = _plain_value(part, self.tag)
        try:
            hash(value)  # all the way down: a tuple holding a list is not hashable either
        except TypeError:
            raise TypeError(f"a {self.tag} state must be hashable, not {type(part).__name__}") from None
        return cast(Part, value)

    def to_plain(self, part: Part) -> Plain:
        return {"value": part}

    def from_plain(self, plain: Mapping[str, Any]) -> Part:
        if "value" not in plain:
            raise ValueError(f"a {self.tag} state needs a 'value' entry")
        value = plain["value"]
        return self.check(tuple(value) if isinstance(value, list) else value)


_MAX_DEPTH = 100
_NANS: dict[bytes, float] = {}


def _plain_value(value: object, tag: str, depth: int = 0) -> Any:
    """``value`` with every NaN in it replaced by one shared object per bit pattern, so that a state
    holding one equals its own copies (tuples compare items by identity first; NaN != NaN).

    Refuses what a value cannot hold: arrays, whose ``==`` compares element by element, and
    containers nested deeper than CPython hashes without overflowing its stack.
    """
    if isinstance(value, float):
        return _NANS.setdefault(struct.pack("<d", value), value) if value != value else value
    if isinstance(value, (tuple, frozenset)):
        if depth >= _MAX_DEPTH:
            raise ValueError(f"a {tag} state must not nest deeper than {_MAX_DEPTH} levels")
        items = [_plain_value(item, tag, depth + 1) for item in value]
        if type(value) not in (tuple, frozenset) or all(map(operator.is_, items, value)):
            return value  # unchanged (a named tuple is kept as it is)
        return type(value)(items)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        raise TypeError(f"a {tag} state must be a value, not a {type(value).__name__}")
    return value


class LazyGuard(Protocol):
    """Protects a runtime that was not initialized when a fork began.

    The fork cannot capture such a runtime's generators (that would initialize
    it), so the guard instead undoes at exit what the block did to it: seeds
    queued for a later initialization, or an initialization the block caused.
    """

    name: str
    """What a failure report calls it (the family's name)."""

    def seed(self, seed: int) -> None:
        """Seed the runtime's generators for the block (lazily, where uninitialized)."""

    def release(self) -> None:
        """Put the runtime back as if the block had never run."""


class RngSource(ABC):
    """One generator rng_fork saves and restores: the four verbs plus a codec.

    Subclass it to add a source, then :func:`rng_fork.register_source` an instance.
    A source that stands for several generators (one per device) overrides
    ``expand`` and ``resolve``; one whose runtime initializes lazily also
    overrides ``guard``. Forks cache what they capture, and ask ``available``
    again before each fork only where a subclass overrides it.

    Example::

        class KeyHolderSource(RngSource):
            name = "jax"
            codec = PlainCodec("jax")

            def capture(self):
                return tuple(int(x) for x in holder.key)

            def restore(self, part):
                holder.key = jax.numpy.asarray(part, dtype=jax.numpy.uint32)

            def seed(self, seed):
                holder.key = jax.random.PRNGKey(seed)

        register_source(KeyHolderSource())
    """

    name: str
    codec: Codec

    def available(self) -> bool:
        """Whether this source can be captured now without side effects."""
        return True

    def inert(self) -> bool:
        """Whether this source can never capture nor guard anything in this process.

        A backend with no devices is inert; forks then skip it without asking again.
        """
        return False

    @abstractmethod
    def capture(self) -> Part:
        """Return the generator's current state as an immutable part."""

    @abstractmethod
    def restore(self, part: Part) -> None:
        """Put the generator back into the state ``part`` (already checked)."""

    @abstractmethod
    def seed(self, seed: int) -> None:
        """Seed the generator from an int in ``[0, 2**32)``."""

    def savers(self) -> Savers:
        """``(save, load)``: the cheapest way to copy this generator's state out and back in.

        Forks and streams use it: ``load(save())`` must restore exactly, but
        what ``save`` returns never leaves rng_fork, so it need not be a
        checked, immutable part. The default is ``(capture, restore)``; override it only where
        something cheaper exists (torch's generators hand out their state tensor).
        """
        return self.capture, self.restore

    def part_of(self, saved: Any) -> Part:
        """The part ``capture`` would give for a value ``savers()``'s ``save`` returned.

        Lets a kept fork (an :class:`~rng_fork.RngStream`) be checkpointed without
        putting its states back into the generators. The default savers save
        parts, so the default returns ``saved`` as it is.
        """
        return cast(Part, saved)

    def check_settled(self) -> None:
        """Raise ``RuntimeError`` if the generator is in a passing mode now (a device stream
        capturing a CUDA graph) in which it must not be seeded, snapshotted or entered by a
        stream whose state outlives the block. Called before any of those changes anything."""
        return None

    def check_target(self, part: Part) -> None:
        """Raise if ``part`` (well formed for the codec) cannot go into this generator."""
        return None

    def check_devices(self, devices: Sequence[int]) -> None:
        """Raise ``ValueError`` if ``devices`` names a device this source does not have."""
        return None

    def expand(self, devices: Sequence[int] | None) -> Sequence[RngSource]:
        """The generators to capture now; ``devices`` selects device indices, if any."""
        return (self,) if self.available() else ()

    def resolve(self, name: str) -> RngSource | None:
        """The generator a saved part named ``name`` should be restored into, if any."""
        return self if name == self.name and self.available() else None

    def guard(self, devices: Sequence[int] | None) -> LazyGuard | None:
        """A guard for a runtime that is not yet initialized, or None."""
        return None

    def identity(self) -> Hashable:
        """What generator this source stands for: two sources with the same identity save
        and load the same generator (the global one, or one passed as ``generators=``)."""
        return self

    def describe(self) -> dict[str, Any]:
        """A short description for :func:`rng_fork.info`."""
        return {"name": self.name, "type": type(self).__name__, "available": self.available()}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
