"""The two things rng_fork is extended with: generator adapters and families of them.

A *source* (:class:`RngSource`) is one generator that rng_fork can save and put
back: Python's global ``random``, NumPy's legacy global generator, torch's CPU
generator, one CUDA device, or a generator object the user passes in. It has
three verbs, ``save``, ``load`` and ``seed``, and a *codec* that describes its
snapshot form (a *part*): how to validate one, and how to turn it into plain
checkpoint data and back. Parts are immutable values that compare with ``==``,
hash and pickle, so a snapshot is a value, not a view of live generators.

A *family* (:class:`RngFamily`) stands for generators that come and go with the
process: one per device of an accelerator type, present only while its runtime
is initialized. The registry holds families; a plain source registers as the
family of one generator (:class:`OneGenerator`).
"""

from __future__ import annotations

import operator
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, cast

import numpy as np
import torch

Part = Hashable
"""What a source's ``capture`` returns: immutable, comparable, picklable."""

Plain = dict[str, Any]
"""A part as checkpoint data: tensors, ints, floats, bools, strings, lists and dicts."""

Savers = tuple[Callable[[], Any], Callable[[Any], object]]
"""``(save, load)`` of one generator: ``load(save())`` puts its state back."""


class InlineSavers(NamedTuple):
    """A source's :meth:`~RngSource.savers` as code that a fork runs in its own frame.

    ``save`` is an expression for the saved value, ``load`` statements that put
    ``{value}`` back; both name the objects in ``names`` as ``{name}``. They must
    do exactly what the source's ``savers()`` do (the tests hold them to it).

    Example::

        InlineSavers("{view}.raw", "{view}.raw = {value}", {"view": view})
    """

    save: str
    load: str
    names: Mapping[str, object]


Devices = Sequence[int] | None
"""Device indices a fork selects (``devices=``), or None for every device."""


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

    The fork cannot save such a runtime's generators (that would initialize
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
    """One generator rng_fork saves and puts back: ``save``, ``load``, ``seed`` and a codec.

    ``save()`` returns the generator's state in the source's *saved* form, the
    cheapest copy there is (forks and streams keep it); ``load(saved)`` puts it
    back exactly. A snapshot holds a *part*: ``part_of(saved)``, an immutable
    value the ``codec`` checks and converts; ``saved_of(part)`` turns one back.
    Both default to the value itself, for sources whose saved form already is a
    part. Subclass it and :func:`rng_fork.register_source` an instance.

    Example::

        class KeyHolderSource(RngSource):
            name = "jax"
            codec = PlainCodec("jax")

            def save(self):
                return tuple(int(x) for x in holder.key)

            def load(self, saved):
                holder.key = jax.numpy.asarray(saved, dtype=jax.numpy.uint32)

            def seed(self, seed):
                holder.key = jax.random.PRNGKey(seed)

        register_source(KeyHolderSource())
    """

    name: str
    codec: Codec

    @abstractmethod
    def save(self) -> Any:
        """The generator's current state, in this source's saved form."""

    @abstractmethod
    def load(self, saved: Any) -> None:
        """Put the generator back into the state ``save`` returned."""

    @abstractmethod
    def seed(self, seed: int) -> None:
        """Seed the generator from an int in ``[0, 2**32)``."""

    def part_of(self, saved: Any) -> Part:
        """The snapshot part for a saved state (by default the saved state itself)."""
        return cast(Part, saved)

    def saved_of(self, part: Part) -> Any:
        """The saved form of a checked part, what :meth:`load` takes (by default the part itself)."""
        return part

    def capture(self) -> Part:
        """The generator's current state as a snapshot part."""
        return self.part_of(self.save())

    def restore(self, part: Part) -> None:
        """Put the generator into the state of a checked part."""
        self.load(self.saved_of(part))

    def savers(self) -> Savers:
        """``(save, load)`` as forks call them: the two methods, or faster callables with the same
        saved form (bound to verified memory views, say)."""
        return self.save, self.load

    def _inline_savers(self) -> InlineSavers | None:
        """:meth:`savers` as code, where the source has such a form: a fork then copies the
        state without a call (rng_fork's own sources; None for any other)."""
        return None

    def check_target(self, part: Part) -> None:
        """Raise ``TypeError``/``ValueError`` if ``part`` (well formed for the codec) cannot go
        into this generator."""
        return None

    def check_not_graph_capturing(self) -> None:
        """Raise ``RuntimeError`` if the generator is being captured into a CUDA graph now, where
        it must not be seeded, snapshotted or entered by a stream whose state outlives the block.
        Called before any of those changes anything."""
        return None

    def identity(self) -> Hashable:
        """What generator this source stands for: two sources with the same identity save
        and load the same generator (the global one, or one passed as ``generators=``)."""
        return self

    def describe(self) -> dict[str, Any]:
        """A short description for :func:`rng_fork.info`."""
        return {"name": self.name, "type": type(self).__name__}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class RngFamily(ABC):
    """Generators that come and go with the process: each device of an accelerator type.

    ``expand`` gives the sources a fork saves now, ``resolve`` the one a saved
    part goes into, ``seed`` seeds them all (:func:`rng_fork.seed_all`). A family
    whose availability can change overrides ``available``, which forks then ask
    before each fork (it must be cheap); one whose runtime initializes lazily
    returns a :class:`LazyGuard` from ``guard``.

    Example::

        class Shards(RngFamily):          # one generator per shard of a sharded model
            name = "shard"
            codec = TorchGeneratorSource.codec

            def expand(self, devices):
                return [TorchGeneratorSource(f"shard:{i}", g) for i, g in enumerate(generators)]

            def resolve(self, name):
                return next((s for s in self.expand(None) if s.name == name), None)

            def seed(self, seed):
                for g in generators:
                    g.manual_seed(seed)
    """

    name: str
    codec: Codec

    def available(self) -> bool:
        """Whether ``expand`` can give generators now without side effects."""
        return True

    def inert(self) -> bool:
        """Whether this family can never give nor guard anything in this process (a backend with
        no devices); forks then skip it without asking again."""
        return False

    @abstractmethod
    def expand(self, devices: Devices) -> Sequence[RngSource]:
        """The generators a fork saves now; ``devices`` selects device indices, if any."""

    @abstractmethod
    def resolve(self, name: str) -> RngSource | None:
        """The generator a saved part named ``name`` goes into, if this process has it."""

    @abstractmethod
    def seed(self, seed: int) -> None:
        """Seed every generator of the family (lazily where its runtime is not up)."""

    def check_devices(self, devices: Sequence[int]) -> None:
        """Raise ``ValueError`` if ``devices`` names a device this family does not have."""
        return None

    def guard(self, devices: Devices) -> LazyGuard | None:
        """A guard for a runtime that is not yet initialized, or None.

        Asked as a block opens, and only while :meth:`available` is false (a fork skips it otherwise)."""
        return None

    def current_device(self) -> int | None:
        """The device this process draws from by default (a rank's own GPU), if any."""
        return None

    def describe(self) -> dict[str, Any]:
        """A short description for :func:`rng_fork.info`."""
        return {"name": self.name, "type": type(self).__name__, "available": self.available()}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class OneGenerator(RngFamily):
    """The family of one generator that is always there: how a plain source is registered.

    Example::

        register_source(KeyHolderSource())      # registered as OneGenerator(KeyHolderSource())
    """

    def __init__(self, source: RngSource) -> None:
        self.source = source
        self.name = source.name
        self.codec = source.codec

    def expand(self, devices: Devices) -> Sequence[RngSource]:
        return (self.source,)

    def resolve(self, name: str) -> RngSource | None:
        return self.source if name == self.name else None

    def seed(self, seed: int) -> None:
        self.source.seed(seed)

    def describe(self) -> dict[str, Any]:
        return {**self.source.describe(), "available": True}

    def __repr__(self) -> str:
        return f"<OneGenerator {self.source!r}>"
