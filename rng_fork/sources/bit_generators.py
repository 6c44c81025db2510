"""NumPy bit generators (behind ``numpy.random.Generator``): their states, which ones are
valid, their frozen and plain forms, and the source that saves and puts them back.

A ``BitGenerator.state`` dict has one fixed shape per class. A snapshot part
holds it *frozen* into nested tuples (so it hashes and compares by value), a
checkpoint holds it as *plain* data (lists and ints). Either form is checked
field by field against that shape before any of it reaches NumPy, because
NumPy's setters store positions unchecked: after ``pos`` 625 in an MT19937 or
``buffer_pos`` -1 in a Philox, the next draw reads out of bounds and the
interpreter dies. A state is accepted exactly when NumPy's setter takes it and
every draw from it stays in bounds, so whatever NumPy holds (``has_uint32`` 2,
an even PCG64 increment) comes back as it was.

A part may also carry the bit generator's ``SeedSequence`` (under
:data:`SEED_SEQ`). Its sizes are bounded: NumPy's constructor mixes the pool
in time quadratic in ``pool_size``, so a forged size would hang the load.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, cast

import numpy as np

from .._checks import short_repr as short
from .base import Codec, Part, Plain, Savers
from .plain import need
from .python import ObjectSource

if np.lib.NumpyVersion(np.__version__) < "2.0.0":
    raise ImportError(
        f"rng_fork needs NumPy 2.0 or later, not {np.__version__}: older NumPy cannot put a bit generator's "
        "SeedSequence back, so Generator.spawn inside a fork would leak out of it"
    )

SEED_SEQ = "rng_fork.seed_seq"
"""The key a part adds to NumPy's state dict: the bit generator's ``SeedSequence``
(``Generator.spawn`` moves its child counter alone; a seed replaces it)."""


class _Int(NamedTuple):
    """An int (not a bool) in ``[low, high]``."""

    low: int
    high: int


class _Words(NamedTuple):
    """A 1-d ndarray of ``length`` unsigned ``bits``-bit words."""

    bits: int
    length: int


_U32 = _Int(0, 2**32 - 1)
_U128 = _Int(0, 2**128 - 1)
# Flags NumPy keeps as the C int it was given; any nonzero value means "a half-word is cached".
_FLAG = _Int(-(2**31), 2**31 - 1)
_PCG = {"state": {"state": _U128, "inc": _U128}, "has_uint32": _FLAG, "uinteger": _U32}


def _philox_positions() -> _Int:
    """The buffer positions this NumPy's Philox setter takes, asked of a probe: any non-negative
    C int before NumPy 2.5 (it reads ``buffer[buffer_pos]`` below 4 and refills the buffer at any
    larger value), 1 to 4 since (the positions its own draws leave)."""
    probe = np.random.Philox(0)
    state = probe.state

    def taken(position: int) -> bool:
        try:
            probe.state = {**state, "buffer_pos": position}
        except Exception:  # noqa: BLE001 - refused, however: 1 to 4 are NumPy's own positions, always safe
            return False
        return True

    return _Int(0 if taken(0) else 1, 2**31 - 1 if taken(5) else 4)


SCHEMAS: dict[str, dict[str, Any]] = {
    # Each class's fields in the order its getter returns them (a part's canonical order).
    # MT19937 reads key[pos] before it regenerates at pos == 624.
    "MT19937": {"state": {"key": _Words(32, 624), "pos": _Int(0, 624)}},
    "PCG64": _PCG,
    "PCG64DXSM": _PCG,
    "Philox": {
        "state": {"counter": _Words(64, 4), "key": _Words(64, 2)},
        "buffer": _Words(64, 4),
        "buffer_pos": _philox_positions(),
        "has_uint32": _FLAG,
        "uinteger": _U32,
    },
    "SFC64": {"state": {"state": _Words(64, 4)}, "has_uint32": _FLAG, "uinteger": _U32},
}
"""The bit generators rng_fork snapshots, with the shape of their ``state`` dicts."""

_DTYPES = {"<u4": 32, ">u4": 32, "<u8": 64, ">u8": 64}
_MAX_WORDS = 624  # the longest array a state holds: MT19937's key

# SeedSequence bounds. NumPy's own sequences have pool_size 4 (8 is the other size its
# documentation suggests), 4 words of fresh entropy, one spawn-key word per generation of
# spawn(), and a uint32 child counter; loading the largest allowed one takes a few ms. The
# counter stays below 2**31: NumPy's spawn() loops forever once it would reach 2**32.
MAX_POOL_SIZE = 1024
MAX_SEED_WORDS = 1024
MAX_CHILDREN_SPAWNED = 2**31 - 1
_SEED_SEQ_KEYS = ("entropy", "spawn_key", "pool_size", "n_children_spawned")


# --- the frozen form (parts) -----------------------------------------------------


def freeze(value: object) -> Part:
    """A bit generator's state dict as nested tuples, so it hashes and compares.

    Arrays keep their dtype in little-endian order, so a part means the same on every machine.
    """
    if isinstance(value, dict):
        return ("dict", tuple((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", tuple(freeze(v) for v in value))
    if isinstance(value, np.ndarray):
        little = value.astype(value.dtype.newbyteorder("<"), copy=False)
        return ("ndarray", little.dtype.str, tuple(little.shape), little.tobytes())
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (int, float, str)) or value is None:
        return value
    raise TypeError(f"unexpected {type(value).__name__} in a bit generator state")


def thaw(frozen: Any, depth: int = 0) -> Any:
    """A frozen state back to NumPy's form; ``ValueError``/``TypeError`` for anything not frozen by :func:`freeze`.

    Only as deep as a state dict goes (with its SeedSequence's entropy list), and
    array headers are checked before NumPy sees the bytes.
    """
    if depth > 4:
        raise ValueError("nested deeper than a bit generator state")
    if isinstance(frozen, tuple):
        kind = frozen[0] if frozen else None
        if kind == "dict" and len(frozen) == 2 and isinstance(frozen[1], tuple):
            thawed: dict[str, Any] = {}
            for item in frozen[1]:
                if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                    raise ValueError("a frozen dict holds (name, value) pairs")
                thawed[item[0]] = thaw(item[1], depth + 1)
            return thawed
        if kind == "list" and len(frozen) == 2 and isinstance(frozen[1], tuple):
            return [thaw(item, depth + 1) for item in frozen[1]]
        if kind == "ndarray" and len(frozen) == 4:
            _, dtype, shape, data = frozen
            count = _array_header(dtype, shape)
            if not isinstance(data, bytes) or len(data) != count * _DTYPES[dtype] // 8:
                raise ValueError(f"a frozen {dtype} array of {count} words needs {count * _DTYPES[dtype] // 8} bytes")
            return np.frombuffer(data, dtype=np.dtype(dtype)).copy()
        raise ValueError(f"not a frozen dict, list or array: {short(kind)}")
    if frozen is None or type(frozen) in (int, str):
        return frozen
    raise TypeError(f"unexpected {type(frozen).__name__} in a frozen bit generator state")


def _array_header(dtype: object, shape: object) -> int:
    """The word count of an array with this dtype string and shape, if it is one a state can hold."""
    if not (isinstance(dtype, str) and dtype in _DTYPES):
        raise ValueError(f"a bit generator state holds arrays of unsigned 32- or 64-bit words, not {short(dtype)}")
    if not (
        isinstance(shape, (tuple, list)) and len(shape) == 1 and type(shape[0]) is int and 0 <= shape[0] <= _MAX_WORDS
    ):
        raise ValueError(f"a bit generator state holds 1-d arrays of at most {_MAX_WORDS} words")
    return int(shape[0])


# --- the plain form (checkpoints) --------------------------------------------------


def to_plain_tree(value: Any) -> Any:
    """A thawed state as plain data: ndarrays become ``{"__ndarray__": dtype, "shape", "values"}``."""
    if isinstance(value, dict):
        return {k: to_plain_tree(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.dtype.str, "shape": list(value.shape), "values": value.ravel().tolist()}
    return value


def from_plain_tree(value: Any, depth: int = 0) -> Any:
    """Plain data back to NumPy's form, as far as a state dict goes; arrays must hold words of their dtype."""
    if depth > 4:
        raise ValueError("nested deeper than a bit generator state")
    if isinstance(value, Mapping):
        if "__ndarray__" in value:
            return _array_from_plain(value)
        if not all(isinstance(k, str) for k in value):
            raise TypeError("a bit generator state's entries are named by strings")
        return {k: from_plain_tree(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [from_plain_tree(v, depth + 1) for v in value]
    if value is None or isinstance(value, (int, float, str)):
        return value  # a number of the wrong kind is refused with the entry it is in
    raise TypeError(f"unexpected {type(value).__name__} in a bit generator state")


def _array_from_plain(plain: Mapping[str, Any]) -> np.ndarray:
    if set(plain) != {"__ndarray__", "shape", "values"}:
        raise ValueError("an array entry holds '__ndarray__', 'shape' and 'values'")
    dtype, values = plain["__ndarray__"], plain["values"]
    count = _array_header(dtype, plain["shape"])
    if not isinstance(values, list) or len(values) != count:
        raise ValueError(f"an array entry of shape [{count}] needs a list of {count} values")
    top = 2 ** _DTYPES[dtype]
    for word in values:
        if type(word) is not int:
            raise TypeError(f"array values must be ints, not {type(word).__name__}")
        if not 0 <= word < top:
            raise ValueError(f"array values of dtype {dtype} must be in [0, 2**{_DTYPES[dtype]}), got {short(word)}")
    return np.array(values, dtype=np.dtype(dtype))


# --- validation ------------------------------------------------------------------


def checked_state(state: object) -> dict[str, Any]:
    """``state`` (NumPy's form, with an optional :data:`SEED_SEQ` entry) in canonical field order,
    if NumPy can take it and draw from it safely.

    Raises ``TypeError`` for a value of the wrong type and ``ValueError`` for a
    wrong name, a missing or extra entry, a wrong length or a value out of range,
    naming the entry.
    """
    if not isinstance(state, dict):
        raise TypeError(f"a bit generator state is a dict, not {type(state).__name__}")
    name = state.get("bit_generator")
    schema = SCHEMAS.get(name) if isinstance(name, str) else None
    if schema is None:
        raise ValueError(f"unknown bit generator {short(name)} (snapshots cover {', '.join(SCHEMAS)})")
    fields = {k: v for k, v in state.items() if k not in ("bit_generator", SEED_SEQ)}
    checked = {"bit_generator": name, **_checked_fields(fields, schema, "")}
    if SEED_SEQ in state:
        checked[SEED_SEQ] = checked_seed_seq(state[SEED_SEQ])
    return checked


def _checked_fields(value: object, schema: Any, path: str) -> Any:
    if isinstance(schema, dict):
        where = f"entry {path!r}" if path else "the state"
        if not isinstance(value, dict):
            raise TypeError(f"{where} must be a dict, not {type(value).__name__}")
        if set(value) != set(schema):
            missing, extra = sorted(set(schema) - set(value)), sorted(set(value) - set(schema))
            raise ValueError(f"{where} must hold exactly {', '.join(schema)} (missing {missing}, unexpected {extra})")
        return {key: _checked_fields(value[key], sub, f"{path}.{key}" if path else key) for key, sub in schema.items()}
    if isinstance(schema, _Int):
        if type(value) is not int:
            raise TypeError(f"entry {path!r} must be an int, not {type(value).__name__}")
        if not schema.low <= value <= schema.high:
            raise ValueError(f"entry {path!r} must be in [{schema.low}, {schema.high}], got {short(value)}")
        return value
    assert isinstance(schema, _Words)
    if not isinstance(value, np.ndarray):
        raise TypeError(f"entry {path!r} must be an array, not {type(value).__name__}")
    if value.dtype.kind != "u" or value.dtype.itemsize * 8 != schema.bits or value.shape != (schema.length,):
        got = f"{value.dtype} {value.shape}"
        raise ValueError(f"entry {path!r} must hold {schema.length} uint{schema.bits} words, got {got}")
    return value


def checked_seed_seq(plain: object) -> dict[str, Any]:
    """A :data:`SEED_SEQ` entry, if its fields are ones NumPy's SeedSequence takes, within the size bounds."""
    if not isinstance(plain, dict) or set(plain) != set(_SEED_SEQ_KEYS):
        raise ValueError(f"{SEED_SEQ} must hold exactly {', '.join(_SEED_SEQ_KEYS)}")
    entropy, spawn_key = plain["entropy"], plain["spawn_key"]
    if not (_natural(entropy) or (isinstance(entropy, list) and all(map(_natural, entropy)))):
        raise ValueError(f"{SEED_SEQ} entropy must be an int >= 0 or a list of them, got {short(entropy)}")
    if not (isinstance(spawn_key, list) and all(map(_natural, spawn_key))):
        raise ValueError(f"{SEED_SEQ} spawn_key must be a list of ints >= 0, got {short(spawn_key)}")
    for key, value in (("entropy", entropy), ("spawn_key", spawn_key)):
        if _words(value) > MAX_SEED_WORDS:
            raise ValueError(f"{SEED_SEQ} {key} must fit in {MAX_SEED_WORDS} 32-bit words")
    bounds = {"pool_size": (4, MAX_POOL_SIZE), "n_children_spawned": (0, MAX_CHILDREN_SPAWNED)}
    for key, (low, high) in bounds.items():
        value = plain[key]
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"{SEED_SEQ} {key} must be an int in [{low}, {high}], got {short(value)}")
    return {key: plain[key] for key in _SEED_SEQ_KEYS}


def _natural(value: object) -> bool:
    return type(value) is int and value >= 0


def _words(value: int | list[int]) -> int:
    """How many 32-bit words NumPy makes of an entropy or spawn-key value (at least one per int)."""
    if isinstance(value, int):
        return max(1, -(-value.bit_length() // 32))
    if len(value) > MAX_SEED_WORDS:
        return len(value)
    return sum(_words(v) for v in value)


def seed_seq_from(plain: Mapping[str, Any]) -> np.random.SeedSequence:
    """The SeedSequence of a checked :data:`SEED_SEQ` entry."""
    try:
        return np.random.SeedSequence(
            plain["entropy"],
            spawn_key=tuple(plain["spawn_key"]),
            pool_size=plain["pool_size"],
            n_children_spawned=plain["n_children_spawned"],
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{SEED_SEQ}: {exc}") from None


def seed_seq_plain(seed_seq: np.random.SeedSequence) -> dict[str, Any]:
    """A SeedSequence as a :data:`SEED_SEQ` entry."""
    entropy: Any = seed_seq.entropy
    if isinstance(entropy, (int, np.integer)):
        entropy = int(entropy)
    elif entropy is not None:
        entropy = [int(e) for e in entropy]
    return {
        "entropy": entropy,
        "spawn_key": [int(k) for k in seed_seq.spawn_key],
        "pool_size": int(seed_seq.pool_size),
        "n_children_spawned": int(seed_seq.n_children_spawned),
    }


def with_children(seed_seq: np.random.SeedSequence, spawned: int) -> np.random.SeedSequence:
    """``seed_seq`` as it was when it had spawned ``spawned`` children (the counter is read-only)."""
    if seed_seq.n_children_spawned == spawned:
        return seed_seq
    return np.random.SeedSequence(
        seed_seq.entropy, spawn_key=seed_seq.spawn_key, pool_size=seed_seq.pool_size, n_children_spawned=spawned
    )


# --- the codec and the source ----------------------------------------------------


def _load_with_seed_seq(bit_generator: np.random.BitGenerator, state: Mapping[str, Any], seed_seq: object) -> None:
    # The only way NumPy offers to replace a bit generator's SeedSequence: its unpickling
    # (``__setstate__((state, seed_seq))``, NumPy 2.0 and later).
    cast(Any, bit_generator).__setstate__((state, seed_seq))


def _split_seed_seq(part: Part) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """NumPy's state dict and the SeedSequence entry of a part (None if it has none)."""
    state = thaw(part)
    seed_seq = state.pop(SEED_SEQ, None) if isinstance(state, dict) else None
    return state, seed_seq


BitGeneratorSaved = tuple[dict[str, Any], Any, int | None]
"""What a bit generator's source saves: ``(state, seed_seq, spawned)``, NumPy's state dict, the
SeedSequence object (None after legacy seeding) and its child count, which ``spawn`` moves."""


class BitGeneratorCodec(Codec):
    """Parts of a NumPy ``BitGenerator``: its ``state`` dict, frozen into tuples, plus its
    ``SeedSequence`` (whose child counter ``Generator.spawn`` moves), if it has one.

    Every field is checked against the shape of its class's state (:data:`SCHEMAS`)
    before NumPy sees it.
    """

    tag = "numpy.random.BitGenerator"

    def check(self, part: object) -> Part:
        return freeze(checked_state(thaw(part)))

    def to_plain(self, part: Part) -> Plain:
        return {"state": to_plain_tree(thaw(part))}

    def from_plain(self, plain: Mapping[str, Any]) -> Part:
        state = from_plain_tree(need(plain, "state", Mapping))
        return freeze(checked_state(state))


class BitGeneratorSource(ObjectSource):
    """A NumPy ``BitGenerator``; a ``numpy.random.Generator`` is saved through its own.

    Example::

        rng = np.random.default_rng(0)
        with fork_rng(generators=[rng]):
            rng.normal()
    """

    codec = BitGeneratorCodec()
    obj: np.random.BitGenerator

    def save(self) -> BitGeneratorSaved:
        # The SeedSequence object with its count, not a plain copy: a fork rebuilds
        # nothing unless a block spawned or reseeded.
        bit_generator = self.obj
        seed_seq = bit_generator.seed_seq
        spawned = seed_seq.n_children_spawned if isinstance(seed_seq, np.random.SeedSequence) else None
        return cast(dict[str, Any], bit_generator.state), seed_seq, spawned

    def load(self, saved: BitGeneratorSaved) -> None:
        bit_generator = self.obj
        state, seed_seq, spawned = saved
        current = bit_generator.seed_seq
        if current is seed_seq and (spawned is None or current.n_children_spawned == spawned):
            bit_generator.state = state
        else:
            kept = seed_seq if spawned is None else with_children(seed_seq, spawned)
            _load_with_seed_seq(bit_generator, state, kept)

    def savers(self) -> Savers:
        return self.save, self.load

    def part_of(self, saved: BitGeneratorSaved) -> Part:
        state, seed_seq, spawned = saved
        if spawned is None:  # no SeedSequence to keep (legacy seeding removed it)
            return freeze(state)
        return freeze({**state, SEED_SEQ: seed_seq_plain(with_children(seed_seq, spawned))})

    def saved_of(self, part: Part) -> BitGeneratorSaved:
        state, plain = _split_seed_seq(part)
        if plain is None:
            return state, None, None
        current = self.obj.seed_seq
        # The SeedSequence in place, if it is the one the part holds: nothing to rebuild.
        if isinstance(current, np.random.SeedSequence) and seed_seq_plain(current) == plain:
            return state, current, current.n_children_spawned
        seed_seq = seed_seq_from(plain)
        return state, seed_seq, seed_seq.n_children_spawned

    def seed(self, seed: int) -> None:
        fresh = type(self.obj)(seed)
        _load_with_seed_seq(self.obj, fresh.state, fresh.seed_seq)  # later children follow the seed

    def check_target(self, part: Part) -> None:
        wanted = type(self.obj).__name__
        got = _split_seed_seq(part)[0].get("bit_generator")
        if got != wanted:
            raise ValueError(f"a {got} state cannot go into a {wanted}")
