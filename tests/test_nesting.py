"""Streams, forks and isolated generators nested in any order, against a model.

The model keeps one private state per stream (and one per open fork, and one
for the code outside every block): every draw comes from the innermost open
owner, a stream's first entry starts from its seed or from its caller, and
entering a stream that is already open further down continues that same state.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rng_fork import RngStream, fork_rng, isolated

from .helpers import seed_globals

Draw = tuple[float, float, float]


def draw() -> Draw:
    return (random.random(), float(np.random.random()), torch.rand(1).item())


@dataclass
class State:
    """A model of the three global generators: private objects in the same states."""

    python: random.Random = field(default_factory=random.Random)
    numpy: np.random.RandomState = field(default_factory=np.random.RandomState)
    torch: torch.Generator = field(default_factory=torch.Generator)

    @classmethod
    def seeded(cls, seed: int) -> State:
        state = cls(random.Random(seed), np.random.RandomState(seed), torch.Generator())
        state.torch.manual_seed(seed)
        return state

    def copy(self) -> State:
        copied = State()
        copied.python.setstate(self.python.getstate())
        copied.numpy.set_state(self.numpy.get_state())
        copied.torch.set_state(self.torch.get_state())
        return copied

    def draw(self) -> Draw:
        return (self.python.random(), float(self.numpy.random_sample()), torch.rand(1, generator=self.torch).item())


STREAM_SEEDS = (11, None, 13)
GENERATOR_SEEDS = (21, None)


class Model:
    def __init__(self) -> None:
        self.owners: list[object] = ["main"]
        self.states: dict[object, State] = {"main": State.seeded(1234)}
        self.draws: list[Draw] = []

    def draw(self) -> None:
        self.draws.append(self.states[self.owners[-1]].draw())

    def enter(self, owner: object, seed: int | None, *, persistent: bool) -> None:
        if owner not in self.states or not persistent:
            self.states[owner] = State.seeded(seed) if seed is not None else self.states[self.owners[-1]].copy()
        self.owners.append(owner)

    def exit(self) -> None:
        self.owners.pop()

    def step(self, which: int) -> None:
        self.enter(("generator", which), GENERATOR_SEEDS[which], persistent=True)
        self.generator_body()
        self.exit()

    def generator_body(self) -> None:
        self.draw()
        self.enter(("stream", 0), STREAM_SEEDS[0], persistent=True)
        self.draw()
        self.exit()
        self.draw()


class Real:
    def __init__(self) -> None:
        seed_globals(1234)
        self.streams = [RngStream(seed=seed) for seed in STREAM_SEEDS]
        self.open = contextlib.ExitStack()
        self.depth: list[contextlib.ExitStack] = []
        self.draws: list[Draw] = []
        self.generators = [self._generator(seed) for seed in GENERATOR_SEEDS]

    def _generator(self, seed: int | None) -> Iterator[None]:
        @isolated(seed=seed)
        def body() -> Iterator[None]:
            while True:
                self.draws.append(draw())
                with self.streams[0]:
                    self.draws.append(draw())
                self.draws.append(draw())
                yield

        return body()

    def draw(self) -> None:
        self.draws.append(draw())

    def enter(self, block: contextlib.AbstractContextManager[object]) -> None:
        inner = contextlib.ExitStack()
        inner.enter_context(block)
        self.depth.append(inner)

    def exit(self) -> None:
        self.depth.pop().close()

    def close(self) -> None:
        while self.depth:
            self.exit()


Op = tuple[str, int]
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("draw"), st.just(0)),
        st.tuples(st.just("fork"), st.integers(-1, 3)),  # -1: unseeded
        st.tuples(st.just("stream"), st.integers(0, len(STREAM_SEEDS) - 1)),
        st.tuples(st.just("exit"), st.just(0)),
        st.tuples(st.just("step"), st.integers(0, len(GENERATOR_SEEDS) - 1)),
    ),
    max_size=40,
)


def run_model(ops: list[Op]) -> list[Draw]:
    model = Model()
    forks = 0
    for op, arg in ops:
        if op == "draw":
            model.draw()
        elif op == "fork":
            forks += 1
            model.enter(("fork", forks), None if arg < 0 else arg, persistent=False)
        elif op == "stream":
            model.enter(("stream", arg), STREAM_SEEDS[arg], persistent=True)
        elif op == "exit" and len(model.owners) > 1:
            model.exit()
        elif op == "step":
            model.step(arg)
    model.draw()  # inside whatever is still open
    while len(model.owners) > 1:
        model.exit()
    model.draw()  # the code after every block
    return model.draws


def run_real(ops: list[Op]) -> list[Draw]:
    real = Real()
    try:
        for op, arg in ops:
            if op == "draw":
                real.draw()
            elif op == "fork":
                real.enter(fork_rng(None if arg < 0 else arg))
            elif op == "stream":
                real.enter(real.streams[arg])
            elif op == "exit" and real.depth:
                real.exit()
            elif op == "step":
                next(real.generators[arg])
        real.draw()
    finally:
        real.close()
    real.draw()
    return real.draws


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_any_nesting_draws_as_the_model_says(ops: list[Op]) -> None:
    assert run_real(ops) == run_model(ops)


def test_a_stream_entered_again_above_another_stream_goes_on_from_its_own_state() -> None:
    a, b = RngStream(seed=1), RngStream(seed=2)
    with a:
        first = torch.rand(1)
        with b, a:
            second = torch.rand(1)
    expected = torch.rand(2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.cat([first, second]), expected)


def test_a_draw_of_a_stream_entered_again_inside_a_fork_is_not_repeated() -> None:
    stream = RngStream(seed=5)
    with stream:
        p = torch.rand(1)
        with fork_rng(), stream:
            q = torch.rand(1)
        r = torch.rand(1)
    assert torch.equal(torch.cat([p, q, r]), torch.rand(3, generator=torch.Generator().manual_seed(5)))


def test_a_fork_open_in_a_suspended_generator_is_no_home_for_an_outer_stream() -> None:
    a = RngStream(seed=0)

    @isolated(seed=1)
    def batches() -> Iterator[float]:
        with fork_rng():  # open across the generator's yields
            for _ in range(2):
                yield torch.rand(1).item()

    with a:
        steps = batches()
        x = next(steps)
        with a:  # a entered again while the generator is suspended inside its fork
            y = torch.rand(1).item()
        z = torch.rand(1).item()
        w = next(steps)
        steps.close()  # leaves its fork: nothing stays open for the tests after this one
    own, private = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    assert [y, z] == torch.rand(2, generator=own).tolist()
    assert [x, w] == torch.rand(2, generator=private).tolist()


def test_a_fork_opened_beside_a_suspended_generator_is_a_home_for_an_outer_stream() -> None:
    # The generator is suspended inside its fork; a fork opened next, in the stream's own
    # code, holds the stream's state, and the stream entered again inside it goes on from it.
    a = RngStream(seed=0)

    @isolated(seed=1)
    def batches() -> Iterator[float]:
        with fork_rng():
            for _ in range(2):
                yield torch.rand(1).item()

    with a:
        steps = batches()
        x = next(steps)
        p = torch.rand(1).item()
        with fork_rng():
            with a:
                q = torch.rand(1).item()
        r = torch.rand(1).item()
        w = next(steps)
        steps.close()
    own, private = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    assert [p, q, r] == torch.rand(3, generator=own).tolist()
    assert [x, w] == torch.rand(2, generator=private).tolist()


def test_the_code_around_an_inner_entry_keeps_its_own_draws() -> None:
    stream = RngStream(seed=5)
    seed_globals(1234)
    expected_outer = [draw() for _ in range(2)]
    seed_globals(1234)
    with fork_rng():
        outer = [draw()]
        with stream:
            torch.rand(4)
        outer.append(draw())
    assert outer == expected_outer
