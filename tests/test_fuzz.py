"""Fuzzers over every entry point that loads a state: a checkpoint with any one entry replaced,
tweaked, removed or added is either refused with a TypeError or ValueError that names the part,
changing nothing, or loaded exactly and safe to draw from.

Every part is validated before anything reaches a generator, so the loads run in this process;
a load that got through to NumPy's out-of-bounds reads would crash it (pytest's faulthandler then
names the test). Each fuzzer is derandomized and bounded to a few seconds.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rng_fork.distributed as rd
from rng_fork import RngState, RngStream, diff, get_rng_state, set_rng_state

from .helpers import one_rank_group

# RNG_FORK_FUZZ_EXAMPLES=5000 fuzzes deeper, from a fresh random seed each run.
_DEEPER = int(os.environ.get("RNG_FORK_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_DEEPER or 300,
    deadline=None,
    derandomize=not _DEEPER,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Ints at the edges of every range a state holds (positions, flags, words, SeedSequence sizes).
EDGE_INTS = [
    -(2**64), -(2**31) - 1, -(2**31), -(10**8), -2, -1, 0, 1, 2, 3, 4, 5, 7, 623, 624, 625, 1023, 1024, 1025,
    10**5, 10**8, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**12,
    2**127, 2**128 - 1, 2**128, 2**4000,
]
# Beyond MAX_SEED_WORDS; built when drawn, since ints this long have no repr.
huge_ints = st.builds(lambda bits: 2**bits - 1, st.sampled_from([32 * 1025, 60000]))


def _nested(depth: int, kind: type) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value] if kind is list else {"state": value}
    return value


ints = st.one_of(st.sampled_from(EDGE_INTS), st.integers(), huge_ints)
floats = st.one_of(st.sampled_from([float("nan"), float("inf"), -0.0, 0.5, 1e308]), st.floats())
leaves = st.one_of(ints, floats, st.booleans(), st.none(), st.text(max_size=4), st.binary(max_size=4))
DTYPES = [torch.int64, torch.int32, torch.uint8, torch.float32, torch.float64, torch.bool, torch.complex64]
SHAPES = [(), (0,), (1,), (2,), (4,), (623,), (624,), (625,), (5056,), (2, 3)]


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype, shape = draw(st.sampled_from(DTYPES)), draw(st.sampled_from(SHAPES))
    fill = draw(st.sampled_from([0, 1, -1, 255, 2**31 - 1, 2**32, -(2**63)]))
    try:
        tensor = torch.full(shape, fill, dtype=dtype)
    except RuntimeError:  # a fill the dtype cannot hold
        tensor = torch.zeros(shape, dtype=dtype)
    form = draw(st.sampled_from(["plain", "meta", "sparse", "strided"]))
    if form == "meta":
        return tensor.to("meta")
    if form == "sparse" and tensor.dim() == 1:
        return tensor.to_sparse()
    if form == "strided" and tensor.numel() > 2:
        return tensor.flatten()[::2]
    return tensor


evil = st.one_of(
    leaves,
    tensors(),
    st.recursive(
        leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
        max_leaves=5,
    ),
    st.sampled_from([_nested(50, list), _nested(50, dict), list(range(2000)), [2**32] * 1025, {"__ndarray__": "|O"}]),
)


def _tweaks(value: object) -> st.SearchStrategy[Any]:
    """Values close to ``value``: its neighbours, its type's edges, a copy of another shape."""
    if isinstance(value, bool):
        return st.sampled_from([not value, int(value), 2, -1])
    if isinstance(value, int):
        as_float = float(value) if abs(value) < 2**1000 else 0.5
        neighbours = [value - 1, value + 1, -value - 1, value + 2**32, value * 2**64, as_float]
        return st.one_of(st.sampled_from(neighbours), st.sampled_from(EDGE_INTS))
    if isinstance(value, float):
        as_int = int(value) if math.isfinite(value) else 3
        return st.sampled_from([math.nan, -math.inf, -value, as_int])
    if isinstance(value, torch.Tensor):
        return st.sampled_from(
            [value[:-1], torch.cat([value, value[:1]]), value.float(), value.to(torch.int32), value.to(torch.uint8),
             value.reshape(1, -1), value.flip(0) if value.dim() else value, torch.full_like(value, -1), value.bool()]
        )
    if isinstance(value, list):
        return st.sampled_from([value[:-1], [*value, value[-1] if value else 0], [str(v) for v in value], value * 2])
    if isinstance(value, str):
        tags = ["random.Random", "numpy.random.RandomState", "numpy.random.BitGenerator", "torch.Generator",
                "random.Random.getstate", "MT19937", "PCG64", "PCG64DXSM", "Philox", "SFC64", "BitGenerator",
                "SeedSequence", "cuda", "cpu", "meta", "<u4", "<u8", ">u4", "|O", "<f8", "<i8"]
        return st.sampled_from(tags)
    return evil


@st.composite
def mutations(draw: st.DrawFn, tree: dict[str, Any]) -> tuple[Any, tuple[Any, ...], str | None]:
    """``tree`` with one entry replaced, tweaked, removed or added; the path to it; the name of an added part."""
    root = {"": copy.deepcopy(tree)}
    parent: Any = root
    key: Any = ""
    path: tuple[Any, ...] = ()
    while True:
        node = parent[key]
        children = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
        if not children or draw(st.integers(0, 7)) == 0:  # mostly down to a leaf, where the checks are
            break
        child = draw(st.sampled_from(children))
        parent, key, path = node, child, (*path, child)
    node = parent[key]
    action = draw(st.sampled_from(["tweak", "tweak", "tweak", "replace", "replace", "delete", "add"]))
    added = None
    if action == "delete" and path:
        del parent[key]
    elif action == "add" and isinstance(node, dict):
        added = draw(st.sampled_from(["extra", "cuda:0", "generator:9", "python", "type", "values", "__ndarray__"]))
        node[added] = draw(evil)
    elif action == "tweak":
        parent[key] = draw(_tweaks(node))
    else:
        parent[key] = draw(evil)
    return root[""], path, added


class Counter(random.Random):
    """A subclass with a state of its own, whose setstate refuses anything else."""

    def __init__(self, n: int = 0) -> None:
        super().__init__(n)
        self.n = n

    def getstate(self) -> tuple[int]:  # type: ignore[override]
        return (self.n,)

    def setstate(self, state: object) -> None:
        if not (isinstance(state, tuple) and len(state) == 1 and type(state[0]) is int):
            raise TypeError(f"a Counter state is (n,), not {state!r}")
        self.n = state[0]


def _generators() -> list[object]:
    """One of every kind ``generators=`` takes, each in a state after some draws."""
    gens: list[object] = [
        random.Random(1), Counter(2), np.random.RandomState(3), np.random.default_rng([4, 2**70]),
        np.random.Generator(np.random.MT19937(5)), np.random.Generator(np.random.Philox(6)),
        np.random.Generator(np.random.SFC64(7)), np.random.Generator(np.random.PCG64DXSM(8)),
        torch.Generator().manual_seed(9),
    ]
    gens[0].gauss(0, 1)  # type: ignore[attr-defined]
    gens[2].randn()  # type: ignore[attr-defined]
    gens[3].spawn(2)  # type: ignore[attr-defined]
    for g in gens[4:8]:
        g.integers(0, 10, size=3)  # type: ignore[attr-defined]
        g.random(dtype=np.float32)  # type: ignore[attr-defined]  # leaves a cached half-word
    torch.randn(3, generator=gens[8])  # type: ignore[call-overload]
    return gens


def _draw_from(gens: list[object]) -> None:
    """A few draws from every generator and every global: whatever was loaded must be safe to draw from."""
    random.random()
    np.random.random_sample(700)  # across MT19937's regeneration
    torch.rand(2)
    for g in gens:
        if isinstance(g, np.random.Generator):
            g.bit_generator.random_raw(700)
            g.random(3, dtype=np.float32)
            if isinstance(g.bit_generator.seed_seq, np.random.SeedSequence):  # a part may have none
                g.spawn(1)
        elif isinstance(g, np.random.RandomState):
            g.random_sample(700)
            g.randn(3)
        elif isinstance(g, random.Random):
            g.random()
            g.gauss(0, 1)
        elif isinstance(g, torch.Generator):
            torch.rand(2, generator=g)


def _check_refusal(exc: BaseException, path: tuple[Any, ...], added: str | None, name_at: int) -> None:
    assert isinstance(exc, (TypeError, ValueError)), f"{type(exc).__name__}: {exc}"
    names = [added] if added is not None and len(path) == name_at else []
    if len(path) > name_at and isinstance(path[name_at], str):
        names.append(path[name_at])
    if names:
        assert any(repr(name) in str(exc) for name in names), f"{exc} does not name {names}"


def _loaded(load: Callable[[], object], path: tuple[Any, ...], added: str | None, name_at: int,
            gens: list[object]) -> bool:
    """Whether ``load()`` took the state. A refusal must name the part and change nothing; a state
    taken must be safe to draw from. ``name_at``: where in ``path`` the part's name is."""
    before = get_rng_state(generators=gens)
    try:
        load()
    except Exception as exc:
        _check_refusal(exc, path, added, name_at)
        assert get_rng_state(generators=gens) == before, "a refused load changed a generator"
        return False
    return True


@FUZZ
@given(data=st.data())
def test_set_rng_state_refuses_or_loads_exactly(data: st.DataObject) -> None:
    gens = _generators()
    sd, path, added = data.draw(mutations(get_rng_state(generators=gens).state_dict()))
    if _loaded(lambda: set_rng_state(sd, generators=gens), path, added, 0, gens):
        # Every generator now holds exactly what the checkpoint says, and draws from it.
        loaded, expected = get_rng_state(generators=gens), RngState.from_state_dict(sd)
        assert loaded == expected, f"loaded differently: {diff(loaded, expected)} at {path}"
        _draw_from(gens)


@FUZZ
@given(data=st.data())
def test_from_state_dict_refuses_or_round_trips(data: st.DataObject) -> None:
    gens = _generators()
    sd, path, added = data.draw(mutations(get_rng_state(generators=gens).state_dict()))
    try:
        state = RngState.from_state_dict(sd)
    except Exception as exc:
        _check_refusal(exc, path, added, 0)
        return
    again = RngState.from_state_dict(state.state_dict())
    assert state == state and again == state and hash(again) == hash(state)
    assert pickle.loads(pickle.dumps(state)) == state


def _started_stream(gens: list[object]) -> RngStream:
    stream = RngStream(seed=1, generators=gens)
    with stream:
        _draw_from(gens)
    return stream


@FUZZ
@given(data=st.data())
def test_stream_load_state_dict_refuses_or_loads(data: st.DataObject) -> None:
    gens = _generators()
    sd = _started_stream(gens).state_dict()
    # The seed entry is left alone: what a stream does with it is the stream's own rule.
    mutated, path, added = data.draw(mutations({k: v for k, v in sd.items() if k != "seed"}))
    if isinstance(mutated, dict):
        mutated["seed"] = sd["seed"]
    stream = RngStream(seed=1, generators=gens)
    if _loaded(lambda: stream.load_state_dict(mutated), path, added, 1, gens):
        before = get_rng_state(generators=gens)
        with stream:
            _draw_from(gens)
        assert get_rng_state(generators=gens) == before  # the stream's draws stay in the stream


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@settings(FUZZ, max_examples=_DEEPER or 150)
@given(data=st.data())
def test_load_rng_state_dict_refuses_or_loads(data: st.DataObject) -> None:
    gens = _generators()
    with one_rank_group():
        sd = rd.rng_state_dict(generators=gens)
        mutated, path, added = data.draw(mutations(sd))
        name_at = 2 if path[:1] == ("ranks",) else len(path) + 1  # "ranks", the rank, the part's name
        if _loaded(lambda: rd.load_rng_state_dict(mutated, generators=gens), path, added, name_at, gens):
            _draw_from(gens)
