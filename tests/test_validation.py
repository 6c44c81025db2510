"""Hostile and unusual states: every field of every part is validated before anything changes,
no checkpoint crashes or hangs the process, and every state the official APIs can reach
snapshots, pickles, compares and restores exactly."""

from __future__ import annotations

import copy
import math
import pickle
import random
import struct
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rng_fork
import rng_fork.distributed as rd
from rng_fork import PlainCodec, RngState, RngStream, diff, fork_rng, get_rng_state, set_rng_state

from .helpers import one_rank_group, refused_unchanged, through_torch_save

BIT_GENERATORS = [np.random.MT19937, np.random.PCG64, np.random.PCG64DXSM, np.random.Philox, np.random.SFC64]


def _drawn(kind: type[np.random.BitGenerator]) -> np.random.Generator:
    """A Generator on ``kind`` after draws that leave every buffer and cached half-word partly used."""
    rng = np.random.Generator(kind(11))
    rng.integers(0, 10, size=5)
    rng.random(dtype=np.float32)
    rng.spawn(1)
    return rng


def _bit_generator_sd(kind: type[np.random.BitGenerator]) -> tuple[np.random.Generator, dict[str, Any]]:
    rng = _drawn(kind)
    return rng, get_rng_state(generators=[rng]).state_dict()


def _refused_and_unchanged(sd: Any, gens: list[object], error: type[Exception], match: str) -> None:
    with refused_unchanged(error, match=match, generators=gens):
        set_rng_state(sd, generators=gens)


# --- NumPy bit generators: every field ------------------------------------------------


def _set(state: dict[str, Any], path: str, value: object) -> None:
    *parents, last = path.split(".")
    for key in parents:
        state = state[key]
    state[last] = value


def _words(dtype: str, values: list[int]) -> dict[str, Any]:
    return {"__ndarray__": dtype, "shape": [len(values)], "values": values}


# (bit generator, entry path inside its state, bad value, error, what the message says)
FIELD_CASES: list[tuple[str, str, object, type[Exception], str]] = [
    # Positions NumPy stores unchecked and then reads out of bounds with (the interpreter dies).
    ("MT19937", "state.pos", 625, ValueError, r"'state.pos' must be in \[0, 624\], got 625"),
    ("MT19937", "state.pos", 10**8, ValueError, "'state.pos' must be in"),
    ("MT19937", "state.pos", -1, ValueError, "'state.pos' must be in"),
    ("Philox", "buffer_pos", -(10**8), ValueError, "'buffer_pos' must be in"),
    ("Philox", "buffer_pos", -1, ValueError, "'buffer_pos' must be in"),
    # Values NumPy refuses with OverflowError (neither a TypeError nor a ValueError).
    ("MT19937", "state.pos", 2**31, ValueError, "'state.pos' must be in"),
    ("SFC64", "uinteger", -1, ValueError, r"'uinteger' must be in \[0, 4294967295\]"),
    ("PCG64", "uinteger", 2**32, ValueError, "'uinteger' must be in"),
    ("PCG64", "has_uint32", 2**31, ValueError, "'has_uint32' must be in"),
    ("PCG64", "state.state", 2**128, ValueError, "'state.state' must be in"),
    ("PCG64DXSM", "state.inc", -1, ValueError, "'state.inc' must be in"),
    ("Philox", "state.counter", _words("<u8", [0, 0, 0, 2**64]), ValueError, "dtype <u8 must be in"),
    ("MT19937", "state.key", _words("<u4", [-1] * 624), ValueError, "dtype <u4 must be in"),
    # Types, lengths and dtypes.
    ("MT19937", "state.pos", 5.0, TypeError, "'state.pos' must be an int, not float"),
    ("MT19937", "state.pos", True, TypeError, "'state.pos' must be an int, not bool"),
    ("Philox", "has_uint32", "1", TypeError, "'has_uint32' must be an int, not str"),
    ("SFC64", "state.state", [1, 2, 3, 4], TypeError, "'state.state' must be an array, not list"),
    ("MT19937", "state.key", _words("<u4", [1] * 623), ValueError, "must hold 624 uint32 words"),
    ("MT19937", "state.key", _words("<u4", [1] * 1000), ValueError, "at most 624 words"),
    ("Philox", "state.key", _words("<u4", [1, 2]), ValueError, "must hold 2 uint64 words"),
    ("Philox", "buffer", _words("<f8", [0, 0, 0, 0]), ValueError, "unsigned 32- or 64-bit words, not '<f8'"),
    ("SFC64", "state.state", _words("|O", [0, 0, 0, 0]), ValueError, "not '|O'"),
    ("SFC64", "state.state", _words("<u8", [1.5, 0, 0, 0]), TypeError, "array values must be ints, not float"),
    ("SFC64", "state.state", {"__ndarray__": "<u8", "shape": [4]}, ValueError, "holds '__ndarray__', 'shape'"),
    ("PCG64", "state", {"state": 1}, ValueError, r"must hold exactly state, inc \(missing \['inc'\]"),
    ("PCG64", "extra", 1, ValueError, r"unexpected \['extra'\]"),
    ("PCG64", "bit_generator", "BitGenerator", ValueError, "unknown bit generator 'BitGenerator'"),
    ("PCG64", "bit_generator", 7, ValueError, "unknown bit generator 7"),
]


@pytest.mark.parametrize(
    ("kind", "path", "bad", "error", "match"), FIELD_CASES, ids=[f"{c[0]}-{c[1]}-{c[2]!r:.20}" for c in FIELD_CASES]
)
def test_every_bit_generator_field_is_checked_before_anything_changes(
    kind: str, path: str, bad: object, error: type[Exception], match: str
) -> None:
    rng, sd = _bit_generator_sd(getattr(np.random, kind))
    _set(sd["generator:0"]["state"], path, bad)
    _refused_and_unchanged(sd, [rng], error, "RNG source 'generator:0': .*" + match)


def _frozen_with(part: Any, key: str, value: object) -> Any:
    """A frozen bit generator part with ``key`` (a top-level or ``state`` entry) replaced."""
    kind, items = part
    if any(k == key for k, _ in items):
        return (kind, tuple((k, value if k == key else v) for k, v in items))
    return (kind, tuple((k, _frozen_with(v, key, value) if k == "state" else v) for k, v in items))


@pytest.mark.parametrize(("kind", "key", "value"), [("MT19937", "pos", 625), ("Philox", "buffer_pos", -1)])
def test_snapshots_built_or_unpickled_with_bad_positions_are_refused(kind: str, key: str, value: int) -> None:
    rng = _drawn(getattr(np.random, kind))
    bad = _frozen_with(get_rng_state(generators=[rng]).part("generator:0"), key, value)
    parts = {"generator:0": ("numpy.random.BitGenerator", bad)}
    match = f"RNG source 'generator:0': entry '.*{key}' must be in"
    with pytest.raises(ValueError, match=match):
        RngState(parts)
    forged = pickle.dumps(RngState._trusted(parts))  # a pickle holding such a part
    with pytest.raises(ValueError, match=match):
        pickle.loads(forged)


@pytest.mark.parametrize("position", [0, 1, 4, 5, 2**31 - 1])
def test_a_philox_buffer_position_is_taken_exactly_where_this_numpys_setter_takes_it(position: int) -> None:
    # NumPy 2.5 refuses positions its own draws never leave (0, past the end); earlier ones take them.
    probe = np.random.Philox(0)
    try:
        probe.state = {**probe.state, "buffer_pos": position}
        numpy_takes = True
    except ValueError:
        numpy_takes = False
    rng = _drawn(np.random.Philox)
    part = _frozen_with(get_rng_state(generators=[rng]).part("generator:0"), "buffer_pos", position)
    parts = {"generator:0": ("numpy.random.BitGenerator", part)}
    if numpy_takes:
        set_rng_state(RngState(parts), generators=[rng], strict=False)
        assert rng.bit_generator.state["buffer_pos"] == position
    else:
        with refused_unchanged(ValueError, "'buffer_pos' must be in", generators=[rng]):
            set_rng_state(RngState(parts), generators=[rng], strict=False)


@pytest.mark.parametrize("kind", BIT_GENERATORS, ids=lambda k: k.__name__)
def test_states_numpy_keeps_round_trip_exactly(kind: type[np.random.BitGenerator]) -> None:
    # Values NumPy's setter takes and draws from safely, though its own draws never leave them:
    # a flag of 2 (any nonzero one means "a half-word is cached"), a Philox buffer position past the
    # end (it refills; NumPy 2.5 and later refuse one), an even PCG64 increment.
    from rng_fork.sources.bit_generators import SCHEMAS

    rng = _drawn(kind)
    state = rng.bit_generator.state
    if "has_uint32" in state:
        state["has_uint32"], state["uinteger"] = 2, 123
    if kind is np.random.Philox:
        state["buffer_pos"] = min(7, SCHEMAS["Philox"]["buffer_pos"].high)
    if kind in (np.random.PCG64, np.random.PCG64DXSM):
        state["state"]["inc"] -= 1
    rng.bit_generator.state = state
    snapshot = get_rng_state(generators=[rng])
    loaded = RngState.from_state_dict(through_torch_save(snapshot.state_dict()))
    assert loaded == snapshot and pickle.loads(pickle.dumps(snapshot)) == snapshot
    expected = rng.bit_generator.random_raw(700).tolist(), rng.random(3, dtype=np.float32).tolist()
    set_rng_state(loaded, generators=[rng])
    assert rng.bit_generator.state["bit_generator"] == kind.__name__
    assert (rng.bit_generator.random_raw(700).tolist(), rng.random(3, dtype=np.float32).tolist()) == expected


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_every_state_the_checks_allow_is_one_numpy_takes_and_keeps(data: st.DataObject) -> None:
    # The checks are not stricter than NumPy: any value in their ranges is taken, kept and snapshotted.
    from rng_fork.sources.bit_generators import SCHEMAS, _Int

    name = data.draw(st.sampled_from(sorted(SCHEMAS)))

    def value(schema: Any) -> Any:
        if isinstance(schema, dict):
            return {key: value(sub) for key, sub in schema.items()}
        if isinstance(schema, _Int):
            return data.draw(st.integers(schema.low, schema.high))
        words = data.draw(st.lists(st.integers(0, 2**schema.bits - 1), min_size=schema.length, max_size=schema.length))
        return np.array(words, dtype=f"<u{schema.bits // 8}")

    state = {"bit_generator": name, **value(SCHEMAS[name])}
    bit_generator = getattr(np.random, name)()
    bit_generator.state = state
    assert _exact(bit_generator.state) == _exact(state)
    snapshot = get_rng_state(generators=[bit_generator])
    assert RngState.from_state_dict(snapshot.state_dict()) == snapshot


# --- SeedSequence sizes ---------------------------------------------------------------

SEED_SEQ_CASES: list[tuple[str, object, str]] = [
    ("pool_size", 10**5, r"pool_size must be an int in \[4, 1024\]"),  # about a minute in NumPy
    ("pool_size", 10**12, "pool_size must be an int in"),  # MemoryError in NumPy
    ("pool_size", 3, "pool_size must be an int in"),
    ("entropy", 2 ** (32 * 5000), "entropy must fit in 1024 32-bit words"),
    ("entropy", [2**64] * 600, "entropy must fit in 1024 32-bit words"),
    ("entropy", list(range(10**6)), "entropy must fit in 1024 32-bit words"),
    ("spawn_key", [0] * 1025, "spawn_key must fit in 1024 32-bit words"),
    ("spawn_key", [2 ** (32 * 2000)], "spawn_key must fit in 1024 32-bit words"),
    ("n_children_spawned", 2**32, r"n_children_spawned must be an int in \[0, 2147483647\]"),  # OverflowError
    ("n_children_spawned", 2**32 - 1, "n_children_spawned must be an int in"),  # the next spawn() never returns
    ("n_children_spawned", 10**100, "n_children_spawned must be an int in"),
]
SEED_SEQ_IDS = [
    "pool-1e5", "pool-1e12", "pool-3", "entropy-5000-words", "entropy-1200-words", "entropy-1e6-ints",
    "spawn_key-1025", "spawn_key-2000-words", "children-2**32", "children-2**32-1", "children-1e100",
]


@pytest.mark.parametrize(
    ("entry", "value", "match"), SEED_SEQ_CASES, ids=SEED_SEQ_IDS
)
def test_seed_sequence_sizes_are_bounded_before_numpy_sees_them(entry: str, value: object, match: str) -> None:
    rng = np.random.default_rng(0)
    sd = get_rng_state(generators=[rng]).state_dict()
    sd["generator:0"]["state"]["rng_fork.seed_seq"][entry] = value
    _refused_and_unchanged(sd, [rng], ValueError, "'generator:0'.*rng_fork.seed_seq " + match)


def test_the_largest_seed_sequence_allowed_loads_exactly() -> None:
    seq = np.random.SeedSequence([2**32 - 1] * 1020 + [1], spawn_key=[5] * 1024, pool_size=1024)
    rng = np.random.Generator(np.random.PCG64(seq))
    rng.spawn(3)
    state = get_rng_state(generators=[rng])
    children = [c.integers(0, 2**63) for c in rng.spawn(2)]
    other = np.random.default_rng(1)
    set_rng_state(through_torch_save(state.state_dict()), generators=[other])
    assert get_rng_state(generators=[other]) == state
    assert [c.integers(0, 2**63) for c in other.spawn(2)] == children


def test_a_part_without_a_seed_sequence_puts_none_back() -> None:
    legacy = np.random.MT19937(1)
    np.random.RandomState(legacy).seed(2)  # legacy seeding leaves no SeedSequence
    state = get_rng_state(generators=[legacy])
    seeded = np.random.MT19937(3)  # has one
    set_rng_state(state, generators=[seeded])
    assert seeded.seed_seq is None
    assert get_rng_state(generators=[seeded]) == state


# --- torch tensors of every kind ---------------------------------------------------------


@pytest.mark.parametrize("part", ["python", "numpy", "torch"])
@pytest.mark.parametrize("form", ["meta", "sparse"])
def test_tensors_without_plain_values_are_type_errors(part: str, form: str) -> None:
    sd = get_rng_state().state_dict()
    key = {"python": "words", "numpy": "key", "torch": "state"}[part]
    tensor = sd[part][key]
    sd[part][key] = tensor.to("meta") if form == "meta" else tensor.to_sparse()
    _refused_and_unchanged(sd, [], TypeError, f"RNG source '{part}': ")


def test_views_of_a_tensor_load_as_their_values() -> None:
    state = get_rng_state()
    sd = state.state_dict()
    sd["python"]["words"] = torch.stack([sd["python"]["words"], sd["python"]["words"]], 1)[:, 0]
    sd["torch"]["state"] = sd["torch"]["state"].clone()._neg_view()._neg_view()
    assert RngState.from_state_dict(sd) == state


# --- plain states (PlainCodec, random.Random subclasses) ---------------------------------


def _deep_tuple(depth: int) -> tuple[Any, ...]:
    value: tuple[Any, ...] = ()
    for _ in range(depth):
        value = (value,)
    return value


class _Keyed(rng_fork.RngSource):
    name = "keyed"
    codec = PlainCodec("test-keyed")
    key: Any = (0, 1)

    def save(self) -> Any:
        return self.key

    def load(self, part: Any) -> None:
        type(self).key = part

    def seed(self, seed: int) -> None:
        type(self).key = (0, seed)


@pytest.fixture
def keyed() -> Iterator[None]:
    rng_fork.register_source(_Keyed())
    try:
        yield
    finally:
        rng_fork.unregister_source("keyed")


def test_a_plain_state_nested_too_deeply_is_refused_not_hashed(keyed: None) -> None:
    # CPython hashes nested tuples recursively in C: 10**6 levels overflow its stack.
    sd = get_rng_state().state_dict()
    sd["keyed"]["value"] = _deep_tuple(10**6)
    _refused_and_unchanged(sd, [], ValueError, "RNG source 'keyed': .* must not nest deeper than 100 levels")


def test_a_plain_state_holding_a_tensor_is_refused(keyed: None) -> None:
    sd = get_rng_state().state_dict()
    sd["keyed"]["value"] = torch.zeros(2)  # hashable by identity, but == compares elementwise
    _refused_and_unchanged(sd, [], TypeError, "RNG source 'keyed': .* must be a value, not a Tensor")


class Lcg(random.Random):
    """A generator of one's own devising, whose setstate refuses states of another shape."""

    def __init__(self, x: int = 1) -> None:
        self.log: list[str] = []
        super().__init__(x)
        self.x = x

    def random(self) -> float:
        self.x = (self.x * 6364136223846793005 + 1442695040888963407) % 2**64
        return self.x / 2**64

    def getstate(self) -> tuple[str, int]:  # type: ignore[override]
        return ("lcg", self.x)

    def setstate(self, state: Any) -> None:
        self.log.append("setstate")  # a side effect on a mutable attribute, before validating
        tag, x = state
        if tag != "lcg" or not 0 <= x < 2**64:
            raise ValueError(f"not an Lcg state: {state!r}")
        self.x = x


def test_a_subclass_state_its_setstate_refuses_changes_nothing() -> None:
    lcg = Lcg(5)
    lcg.random()
    torch_gen = torch.Generator().manual_seed(1)
    sd = get_rng_state(generators=[lcg, torch_gen]).state_dict()
    sd["generator:0"]["value"] = ["Lcg", ("lcg", -1)]
    torch.rand(3)
    before, log = get_rng_state(generators=[lcg, torch_gen]), list(lcg.log)
    with pytest.raises(ValueError, match=r"RNG source 'generator:0': Lcg.setstate refuses .*ValueError"):
        set_rng_state(sd, generators=[lcg, torch_gen])
    assert get_rng_state(generators=[lcg, torch_gen]) == before  # the globals were not restored either
    assert lcg.log == log  # the scratch instance had a copy of the list


def test_a_subclass_state_its_setstate_takes_is_restored() -> None:
    lcg = Lcg(5)
    state = get_rng_state(generators=[lcg])
    expected = [lcg.random() for _ in range(3)]
    set_rng_state(through_torch_save(state.state_dict()), generators=[lcg])
    assert [lcg.random() for _ in range(3)] == expected


def test_a_subclass_state_holding_a_nan_equals_its_copies() -> None:
    class WithCache(Lcg):
        def getstate(self) -> tuple[Any, ...]:  # type: ignore[override]
            return (super().getstate(), self.gauss_next)  # type: ignore[attr-defined]

        def setstate(self, state: Any) -> None:
            super().setstate(state[0])
            self.gauss_next = state[1]

    gen = WithCache(3)
    gen.gauss_next = math.nan
    state = get_rng_state(generators=[gen])
    assert pickle.loads(pickle.dumps(state)) == state
    assert RngState.from_state_dict(through_torch_save(state.state_dict())) == state


def test_a_subclass_whose_instances_cannot_be_made_bare_is_refused_before_restoring() -> None:
    class NeedsArgs(Lcg):
        def __new__(cls, x: int) -> NeedsArgs:
            return super().__new__(cls, x)

    gen = NeedsArgs(3)
    state = get_rng_state(generators=[gen])
    with pytest.raises(TypeError, match="RNG source 'generator:0': cannot make a scratch"):
        set_rng_state(state, generators=[gen])


# --- states reachable through the official APIs ------------------------------------------


def _exact(value: object) -> object:
    """A value with floats by their bits, so NaN equals itself and -0.0 differs from 0.0."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, (tuple, list)):
        return tuple(_exact(v) for v in value)
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tobytes()
    return (type(value).__name__, value)


NAN_WITH_PAYLOAD = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_0000_1234))[0]
GAUSS_NEXTS = [math.nan, NAN_WITH_PAYLOAD, math.inf, -math.inf, -0.0, 0.0, 3, -(2**80), None]


def _everything_round_trips(read: Callable[[], object]) -> RngState:
    """A snapshot of the current state compares equal to itself and to its copies, and restores exactly."""
    expected = _exact(read())
    state = get_rng_state()
    copies = [
        state,
        pickle.loads(pickle.dumps(state)),
        copy.deepcopy(state),
        RngState.from_state_dict(through_torch_save(state.state_dict())),
    ]
    for other in copies:
        assert other == state and hash(other) == hash(state) and diff(state, other) == []
    random.random(), np.random.randn(3)  # move on
    for other in copies:
        set_rng_state(other)
        assert _exact(read()) == expected
    with fork_rng():
        random.gauss(0, 1), np.random.randn()
    assert _exact(read()) == expected
    return state


@pytest.mark.parametrize("gauss_next", GAUSS_NEXTS, ids=repr)
def test_every_python_gauss_next_round_trips_exactly(gauss_next: object) -> None:
    random.setstate((*random.getstate()[:2], gauss_next))
    _everything_round_trips(random.getstate)


@pytest.mark.parametrize(("has_gauss", "gauss"), [(1, math.nan), (1, NAN_WITH_PAYLOAD), (0, math.nan), (2, 0.5),
                                                  (-1, -0.0), (1, -math.inf), (2**31 - 1, 1e308)])
def test_every_numpy_gaussian_cache_round_trips_exactly(has_gauss: int, gauss: float) -> None:
    state = np.random.get_state(legacy=False)
    np.random.set_state({**state, "has_gauss": has_gauss, "gauss": gauss})
    _everything_round_trips(lambda: np.random.get_state(legacy=False))
    assert np.random.get_state(legacy=False)["has_gauss"] == has_gauss  # NumPy keeps it so, and draws as 1


def test_snapshots_that_differ_only_in_a_float_bit_differ() -> None:
    states = []
    for gauss_next in (0.0, -0.0, math.nan, NAN_WITH_PAYLOAD, 1.0, 1):
        random.setstate((*random.getstate()[:2], gauss_next))
        states.append(get_rng_state())
    assert len(set(states)) == len(states)
    assert all(a != b for i, a in enumerate(states) for b in states[i + 1 :])


def test_a_python_gauss_next_that_is_not_a_number_is_named_at_capture() -> None:
    random.setstate((*random.getstate()[:2], "0.5"))  # random.setstate takes anything
    with pytest.raises(TypeError, match="python: gauss_next is a str"):
        get_rng_state()
    with fork_rng():  # a fork takes the object as it is
        random.random()
    assert random.getstate()[2] == "0.5"
    random.seed(0)


def test_a_nan_cache_is_in_sync_across_ranks() -> None:
    random.setstate((*random.getstate()[:2], math.nan))
    np.random.set_state({**np.random.get_state(legacy=False), "has_gauss": 1, "gauss": math.nan})
    with one_rank_group():
        assert rd.check_rng_in_sync()  # the states travel pickled
        report = rd.load_rng_state_dict(through_torch_save(rd.rng_state_dict()))
        assert report.complete


def test_a_stream_keeps_a_nan_cache() -> None:
    stream = RngStream(seed=1)
    with stream:
        random.setstate((*random.getstate()[:2], math.nan))
    restored = RngStream(seed=1)
    restored.load_state_dict(through_torch_save(stream.state_dict()))
    with restored:
        assert math.isnan(random.gauss(0, 1))


# --- the NumPy floor ---------------------------------------------------------------------


@pytest.mark.slow  # a fresh interpreter
def test_numpy_before_2_0_is_refused_at_import() -> None:
    # Before 2.0 NumPy cannot put a bit generator's SeedSequence back: Generator.spawn in a fork would leak.
    import subprocess
    import sys

    code = "import numpy; numpy.__version__ = '1.26.4'; import rng_fork"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "ImportError: rng_fork needs NumPy 2.0 or later, not 1.26.4" in result.stderr

