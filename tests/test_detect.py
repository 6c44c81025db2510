"""assert_untouched and diff."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Iterator

import numpy as np
import pytest
import torch

import rng_fork
from rng_fork import RngTouchedError, assert_untouched, diff, fork_rng, get_rng_state

from .helpers import assert_error, refused_unchanged

TOUCHES: dict[str, Callable[[], object]] = {
    "python": random.random,
    "numpy": np.random.rand,
    "torch": lambda: torch.rand(1),
}


@pytest.mark.parametrize("source", list(TOUCHES))
def test_each_source_is_detected(source: str) -> None:
    before = get_rng_state()
    with pytest.raises(RngTouchedError) as info:
        with assert_untouched():
            TOUCHES[source]()
    assert info.value.sources == [source]
    assert source in str(info.value)
    assert isinstance(info.value, AssertionError)
    assert diff(before, get_rng_state()) == [source]


def test_gaussian_cache_change_is_detected() -> None:
    np.random.randn()
    with pytest.raises(RngTouchedError, match="numpy"):
        with assert_untouched():
            np.random.randn()  # only the cached Gaussian changes


def test_several_sources_named_together() -> None:
    with pytest.raises(RngTouchedError, match="python, numpy, torch"):
        with assert_untouched():
            for touch in TOUCHES.values():
                touch()


def test_generator_objects() -> None:
    g = torch.Generator()
    ng = np.random.default_rng(0)
    with pytest.raises(RngTouchedError, match="generator:1"):
        with assert_untouched(generators=[g, ng]):
            ng.random()
    with assert_untouched(generators=[g, ng]):
        torch.rand(1, generator=torch.Generator())
    with pytest.raises(TypeError):
        assert_untouched(generators=[1])


def test_clean_code_and_forked_code_pass() -> None:
    with assert_untouched():
        x = torch.ones(3) * 2
        with fork_rng():
            torch.rand(10)
            random.random()
    assert x.sum() == 6


def test_reseeding_to_the_same_state_counts_as_untouched() -> None:
    state = get_rng_state()
    with assert_untouched():
        torch.rand(1)
        rng_fork.set_rng_state(state)


def test_block_errors_win() -> None:
    with pytest.raises(KeyError):
        with assert_untouched():
            torch.rand(1)
            raise KeyError("mine")


def test_as_decorator_sync_and_async() -> None:
    @assert_untouched()
    def log(x: int) -> int:
        return x + 1

    @assert_untouched()
    def leaky() -> None:
        torch.rand(1)

    @assert_untouched()
    async def async_leaky() -> None:
        await asyncio.sleep(0)
        np.random.rand()

    assert log(1) == 2
    with pytest.raises(RngTouchedError, match="torch"):
        leaky()
    with pytest.raises(RngTouchedError, match="numpy"):
        asyncio.run(async_leaky())


def test_concurrent_calls_of_a_decorated_coroutine_each_check_their_own_window() -> None:
    # Tasks on one event loop share the thread: x draws and ends while y is waiting, and
    # each call is compared with the snapshot it took, not the thread's latest.
    @assert_untouched()
    async def handler(draws: bool, wait: float) -> None:
        if draws:
            torch.rand(1)
        await asyncio.sleep(wait)

    async def both() -> list[object]:
        return await asyncio.gather(handler(True, 0.0), handler(False, 0.05), return_exceptions=True)

    x, y = asyncio.run(both())
    assert isinstance(x, RngTouchedError) and "torch" in str(x)
    assert y is None


def test_generator_functions_are_refused_as_decorated() -> None:
    def gen() -> Iterator[float]:
        yield torch.rand(1).item()

    async def agen() -> AsyncIterator[float]:
        yield torch.rand(1).item()

    for fn in (gen, agen):
        with pytest.raises(TypeError, match=f"cannot decorate the generator function .*{fn.__name__}"):
            assert_untouched()(fn)


def test_what_a_plain_callable_returns_to_run_later_is_checked_or_refused() -> None:
    async def leaky() -> None:
        await asyncio.sleep(0)
        np.random.rand()

    def gen() -> Iterator[float]:
        yield torch.rand(1).item()

    with pytest.raises(RngTouchedError, match="numpy"):
        asyncio.run(assert_untouched()(lambda: leaky())())
    with pytest.raises(TypeError, match="returned a generator, whose body runs after the call"):
        assert_untouched()(lambda: gen())()


def test_a_lone_loader_is_refused_before_it_is_iterated() -> None:
    loader = torch.utils.data.DataLoader(range(8), shuffle=True)
    with refused_unchanged(TypeError, match="not one DataLoader"):
        assert_untouched(generators=loader)  # type: ignore[arg-type]
    g = torch.Generator()
    check = assert_untouched(generators=(x for x in [g]))  # a one-shot iterable, used at every entry
    for _ in range(2):
        with pytest.raises(RngTouchedError, match="generator:0"):
            with check:
                torch.rand(1, generator=g)


def test_diff() -> None:
    a = get_rng_state()
    assert diff(a, a) == []
    random.random()
    torch.rand(1)
    assert diff(a, get_rng_state()) == ["python", "torch"]
    with_gen = get_rng_state(generators=[torch.Generator()])
    assert diff(get_rng_state(), with_gen) == ["generator:0"]
    with pytest.raises(TypeError):
        diff(a, {})  # type: ignore[arg-type]


def test_explain_lists_each_consumption_per_changed_source() -> None:
    import sys

    with pytest.raises(RngTouchedError) as caught:
        with assert_untouched(explain=True):
            torch.rand(1); line = sys._getframe().f_lineno  # noqa: E702
            random.random()
            random.random()
    message = str(caught.value)
    assert caught.value.sources == ["python", "torch"]
    assert f"{__file__}:{line} in test_explain_lists_each_consumption_per_changed_source: rand (draw)" in message
    assert f"{__file__}:{line + 1} in" in message and "random (draw)" in message
    assert message.index("  python:") < message.index("  torch:")


def test_without_explain_the_message_stays_as_it_was() -> None:
    with pytest.raises(RngTouchedError) as caught:
        with assert_untouched():
            torch.rand(1)
    assert_error(caught.value, RngTouchedError, "torch")
    assert "\n" not in str(caught.value)  # one line: nothing explained
    assert caught.value.explanation is None


def test_explain_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="explain must be a bool"):
        assert_untouched(explain=1)  # type: ignore[arg-type]
