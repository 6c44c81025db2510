"""The core invariant, over random programs: a fork block never changes the draws outside it."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.random.mtrand import get_bit_generator, set_bit_generator

import rng_fork

from .helpers import seed_globals

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
    if op == "np.swap":  # NumPy's global draws from a new bit generator from here on
        set_bit_generator((np.random.PCG64 if n % 2 else np.random.MT19937)(n))
        return None
    raise AssertionError(op)


OPS = [
    "py.random", "py.gauss", "py.randint", "np.rand", "np.randn", "np.randint", "torch.rand", "torch.randn",
    "torch.randperm", "gen.torch", "gen.numpy", "gen.python", "gen.randomstate",
]

draws = st.tuples(st.sampled_from(OPS), st.integers(1, 5))
bodies = st.lists(draws, max_size=8)  # a block's body without blocks of its own
# Programs for the block kinds: also swapping NumPy's bit generator, inside blocks and out.
draws_and_swaps = st.one_of(draws, st.tuples(st.just("np.swap"), st.integers(1, 5)))
KINDS = ("fork", "isolated", "stream")
Program = list[tuple[str, int] | tuple[str, Any, Any]]


def _blocks(children: st.SearchStrategy[Program]) -> st.SearchStrategy[tuple[str, Any, Any]]:
    return st.tuples(st.just("block"), st.one_of(st.none(), st.integers(0, 2**32 - 1)), children)


programs = st.recursive(
    st.lists(draws, max_size=6),
    lambda children: st.lists(st.one_of(draws, _blocks(children)), max_size=6),
    max_leaves=25,
)


def _kind_blocks(children: st.SearchStrategy[Program]) -> st.SearchStrategy[tuple[str, Any, Any]]:
    return st.tuples(st.sampled_from(KINDS), st.one_of(st.none(), st.integers(0, 2**32 - 1)), children)


kind_programs = st.recursive(
    st.lists(draws_and_swaps, max_size=6),
    lambda children: st.lists(st.one_of(draws_and_swaps, _kind_blocks(children)), max_size=6),
    max_leaves=25,
)


def _run(
    program: Program,
    gens: Generators,
    out: list[object] | None,
    with_blocks: bool,
    streams: dict[int | None, rng_fork.RngStream] | None = None,
) -> None:
    for step in program:
        if step[0] in ("block", *KINDS):
            if not with_blocks:
                continue
            kind, seed, body = step
            if kind in ("block", "fork"):
                with rng_fork.fork_rng(seed=seed, generators=gens):
                    _run(body, gens, None, with_blocks, streams)
            elif kind == "isolated":
                rng_fork.isolated(seed=seed, generators=gens)(_run)(body, gens, None, with_blocks, streams)
            else:
                assert streams is not None
                stream = streams.setdefault(seed, rng_fork.RngStream(seed=seed, generators=gens))
                with stream:
                    _run(body, gens, None, with_blocks, streams)
        else:
            op, n = step
            value = _draw(op, n, gens)
            if out is not None:
                out.append(value)


def _generators(*seeds: int | None) -> Generators:
    """One generator object of each kind, seeded with ``seeds`` (as their constructors seed them without)."""
    tg_seed, ng_seed, pr_seed, rs_seed = seeds or (None,) * 4
    tg = torch.Generator()
    if tg_seed is not None:
        tg.manual_seed(tg_seed)
    return (tg, np.random.default_rng(ng_seed), random.Random(pr_seed), np.random.RandomState(rs_seed))


def _outer_draws(program: Program, with_blocks: bool) -> list[object]:
    set_bit_generator(np.random.MT19937(0))  # a program may have left another one
    seed_globals(77)
    gens = _generators(1, 2, 3, 4)
    out: list[object] = []
    _run(program, gens, out, with_blocks, {})
    # A tail of draws from every source after the last block.
    for op in OPS:
        out.append(_draw(op, 3, gens))
    out.append(type(get_bit_generator()).__name__)
    return out


@settings(max_examples=150, deadline=None)
@given(programs)
def test_blocks_never_change_outer_draws(program: Program) -> None:
    assert _outer_draws(program, with_blocks=True) == _outer_draws(program, with_blocks=False)


@settings(max_examples=100, deadline=None)
@given(kind_programs)
def test_forks_isolated_calls_and_streams_never_change_outer_draws(program: Program) -> None:
    """fork_rng, @isolated and RngStream blocks, nested in any order, some swapping NumPy's bit generator."""
    original = get_bit_generator()
    try:
        assert _outer_draws(program, with_blocks=True) == _outer_draws(program, with_blocks=False)
    finally:
        set_bit_generator(original)  # hypothesis puts NumPy's state back after each example


@settings(max_examples=60, deadline=None)
@given(bodies, st.integers(0, 2**32 - 1))
def test_seeded_blocks_are_deterministic(body: Program, seed: int) -> None:
    results = []
    for start in (1, 2):
        seed_globals(start)
        gens = _generators(*[start] * 4)
        inside: list[object] = []
        with rng_fork.fork_rng(seed=seed, generators=gens):
            _run(body, gens, inside, with_blocks=True)
        results.append(inside)
    assert results[0] == results[1]


@settings(max_examples=60, deadline=None)
@given(bodies)
def test_snapshot_round_trip_through_state_dict(body: Program) -> None:
    gens = _generators()
    _run(body, gens, None, with_blocks=True)
    state = rng_fork.get_rng_state(generators=gens)
    assert rng_fork.RngState.from_state_dict(state.state_dict()) == state
    after: list[object] = []
    _run(body, gens, after, with_blocks=True)
    rng_fork.set_rng_state(state.state_dict(), generators=gens)
    again: list[object] = []
    _run(body, gens, again, with_blocks=True)
    assert after == again
