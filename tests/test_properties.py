"""The core invariant, over random programs: a fork block never changes the draws outside it."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rng_fork

from .conftest import seed_globals

Generators = tuple[torch.Generator, np.random.Generator, random.Random, np.random.RandomState]


def _draw(op: str, n: int, gens: Generators) -> object:
    tg, ng, pr, rs = gens
    if op == "py.random":
        return [random.random() for _ in range(n)]
    if op == "py.gauss":
        return [random.gauss(0, 1) for _ in range(n)]
    if op == "py.randint":
        return [random.randint(0, 10**9) for _ in range(n)]
    if op == "np.rand":
        return np.random.rand(n).tolist()
    if op == "np.randn":
        return np.random.randn(n).tolist()
    if op == "np.randint":
        return np.random.randint(0, 2**31, size=n).tolist()
    if op == "torch.rand":
        return torch.rand(n).tolist()
    if op == "torch.randn":
        return torch.randn(n).tolist()
    if op == "torch.randperm":
        return torch.randperm(n + 1).tolist()
    if op == "gen.torch":
        return torch.randn(n, generator=tg).tolist()
    if op == "gen.numpy":
        return ng.normal(size=n).tolist()
    if op == "gen.python":
        return [pr.gauss(0, 1) for _ in range(n)]
    if op == "gen.randomstate":
        return rs.randn(n).tolist()
    raise AssertionError(op)


OPS = [
    "py.random", "py.gauss", "py.randint", "np.rand", "np.randn", "np.randint", "torch.rand", "torch.randn",
    "torch.randperm", "gen.torch", "gen.numpy", "gen.python", "gen.randomstate",
]

draws = st.tuples(st.sampled_from(OPS), st.integers(1, 5))
Program = list[tuple[str, int] | tuple[str, Any, Any]]


def _blocks(children: st.SearchStrategy[Program]) -> st.SearchStrategy[tuple[str, Any, Any]]:
    return st.tuples(st.just("block"), st.one_of(st.none(), st.integers(0, 2**32 - 1)), children)


programs = st.recursive(
    st.lists(draws, max_size=6),
    lambda children: st.lists(st.one_of(draws, _blocks(children)), max_size=6),
    max_leaves=25,
)


def _run(program: Program, gens: Generators, out: list[object] | None, with_blocks: bool) -> None:
    for step in program:
        if step[0] == "block":
            if not with_blocks:
                continue
            _, seed, body = step
            with rng_fork.fork_rng(seed=seed, generators=gens):
                _run(body, gens, None, with_blocks)
        else:
            op, n = step
            value = _draw(op, n, gens)
            if out is not None:
                out.append(value)


def _outer_draws(program: Program, with_blocks: bool) -> list[object]:
    seed_globals(77)
    gens: Generators = (
        torch.Generator().manual_seed(1),
        np.random.default_rng(2),
        random.Random(3),
        np.random.RandomState(4),
    )
    out: list[object] = []
    _run(program, gens, out, with_blocks)
    # A tail of draws from every source after the last block.
    for op in OPS:
        out.append(_draw(op, 3, gens))
    return out


@settings(max_examples=150, deadline=None)
@given(programs)
def test_blocks_never_change_outer_draws(program: Program) -> None:
    assert _outer_draws(program, with_blocks=True) == _outer_draws(program, with_blocks=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(draws, max_size=8), st.integers(0, 2**32 - 1))
def test_seeded_blocks_are_deterministic(body: Program, seed: int) -> None:
    results = []
    for start in (1, 2):
        seed_globals(start)
        gens: Generators = (
            torch.Generator().manual_seed(start),
            np.random.default_rng(start),
            random.Random(start),
            np.random.RandomState(start),
        )
        inside: list[object] = []
        with rng_fork.fork_rng(seed=seed, generators=gens):
            _run(body, gens, inside, with_blocks=True)
        results.append(inside)
    assert results[0] == results[1]


@settings(max_examples=60, deadline=None)
@given(st.lists(draws, max_size=8))
def test_snapshot_round_trip_through_state_dict(body: Program) -> None:
    gens: Generators = (torch.Generator(), np.random.default_rng(), random.Random(), np.random.RandomState())
    _run(body, gens, None, with_blocks=True)
    state = rng_fork.get_rng_state(generators=gens)
    assert rng_fork.RngState.from_state_dict(state.state_dict()) == state
    after: list[object] = []
    _run(body, gens, after, with_blocks=True)
    rng_fork.set_rng_state(state.state_dict(), generators=gens)
    again: list[object] = []
    _run(body, gens, again, with_blocks=True)
    assert after == again
