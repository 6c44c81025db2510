"""The fork's hot path: straight-line savers, sources of generators= built once, and their fallbacks."""

from __future__ import annotations

import gc
import random
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

import rng_fork
from rng_fork import _swap
from rng_fork.errors import RngRestoreError
from rng_fork.sources import PythonRandomSource, RngSource, register_source, unregister_source


def test_a_source_set_saves_and_loads_every_source_in_one_call() -> None:
    sources = _swap.plan_for(None).sources
    assert sources.save_all.__code__.co_filename == "<rng_fork savers>"  # generated, one frame
    values = sources.save_all()
    assert len(values) == len(sources.sources)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    sources.load_all(values)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_a_block_that_swaps_numpy_bit_generator_gets_the_original_back() -> None:
    original = np.random.mtrand._rand._bit_generator
    np.random.randn()
    expected = np.random.get_state()
    with rng_fork.fork_rng():
        np.random.set_bit_generator(np.random.PCG64(5))
        np.random.random(3)
    assert np.random.mtrand._rand._bit_generator is original
    assert str(np.random.get_state()) == str(expected)


def test_generators_of_the_same_objects_share_one_source_set() -> None:
    g, rs = torch.Generator().manual_seed(1), np.random.RandomState(2)
    first = _swap.extra_sources([g, rs])
    assert _swap.extra_sources((g, rs)) is first
    assert _swap.extra_sources([rs, g]) is not first  # other order, other names
    other = torch.Generator().manual_seed(1)
    assert _swap.extra_sources([other, rs]).sources[0].obj is other  # type: ignore[attr-defined]
    expected = (g.get_state(), rs.get_state()[1].copy())
    for _ in range(3):
        with rng_fork.fork_rng(generators=[g, rs]):
            torch.rand(5, generator=g)
            rs.random_sample(7)
    assert torch.equal(g.get_state(), expected[0])
    assert (rs.get_state()[1] == expected[1]).all()


def test_a_loader_is_resolved_at_every_fork() -> None:
    dataset = list(range(8))
    loader = torch.utils.data.DataLoader(dataset, shuffle=True, generator=torch.Generator().manual_seed(0))
    before = _swap.extra_sources([loader])
    replacement = torch.Generator().manual_seed(3)
    loader.generator = replacement
    loader.sampler.generator = replacement  # type: ignore[attr-defined]
    after = _swap.extra_sources([loader])
    assert [s.obj for s in after.sources] == [replacement]  # type: ignore[attr-defined]
    assert after is not before
    state = replacement.get_state()
    with rng_fork.fork_rng(generators=[loader]):
        list(loader)
    assert torch.equal(replacement.get_state(), state)


def test_the_kept_source_sets_are_bounded() -> None:
    generators = [torch.Generator() for _ in range(3 * _swap._EXTRAS_KEPT)]
    for g in generators:
        _swap.extra_sources([g])
    assert len(_swap._extras) <= _swap._EXTRAS_KEPT


class _Failing(RngSource):
    """A source whose load fails: the straight-line load must fall back and report it."""

    name = "failing"
    codec = PythonRandomSource.codec

    def save(self) -> int:
        return 0

    def load(self, saved: object) -> None:
        raise OSError("cannot put it back")

    def seed(self, seed: int) -> None:
        return None


def test_a_failing_load_in_the_straight_line_still_puts_every_other_source_back() -> None:
    register_source(_Failing())
    try:
        state = random.getstate(), torch.get_rng_state()
        with pytest.raises(RngRestoreError, match="failing"), rng_fork.fork_rng():
            random.random()
            torch.rand(2)
        assert random.getstate() == state[0]
        assert torch.equal(torch.get_rng_state(), state[1])
    finally:
        unregister_source("failing")


class _FailsFirst(RngSource):
    """Registered before the built-in sources' loads run: fails once, then loads."""

    name = "flaky"
    codec = PythonRandomSource.codec

    def __init__(self) -> None:
        self.loads = 0

    def save(self) -> int:
        return 0

    def load(self, saved: object) -> None:
        self.loads += 1
        if self.loads == 1:
            raise OSError("not yet")

    def seed(self, seed: int) -> None:
        return None


def test_a_load_that_fails_once_is_done_again_and_the_block_leaves_cleanly() -> None:
    flaky = _FailsFirst()
    register_source(flaky)
    try:
        state = random.getstate()
        with rng_fork.fork_rng():
            random.random()
        assert random.getstate() == state
        assert flaky.loads == 2
    finally:
        unregister_source("flaky")


def test_the_built_in_sources_are_copied_in_the_generated_code_without_calls_of_their_own() -> None:
    from rng_fork.sources import _fastpath, _torch_view

    sources = _swap.plan_for(None).sources
    fast = [_fastpath.FAST_PYTHON, _fastpath.FAST_NUMPY, _torch_view.torch_view_info().startswith("active")]
    assert [inline is not None for inline in sources.inlines] == fast
    called = {name for name in sources.save_all.__code__.co_names if name[:1] in "sl" and name[1:].isdigit()}
    assert called == {f"s{i}" for i, on in enumerate(fast) if not on}


class _OwnSavers(PythonRandomSource):
    """A subclass with savers of its own: they are called, never the inherited inline form."""

    calls = 0

    def savers(self) -> tuple[Callable[[], object], Callable[[object], None]]:
        save, load = super().savers()

        def counted_save() -> object:
            _OwnSavers.calls += 1
            return save()

        return counted_save, load


def test_a_subclass_with_savers_of_its_own_is_called_not_written_out() -> None:
    r = random.Random(1)
    sources = _swap.SourceSet([_OwnSavers("own", r)])
    assert sources.inlines == (None,)
    values = sources.save_all()
    expected = r.random()
    sources.load_all(values)
    assert r.random() == expected
    assert _OwnSavers.calls == 1


def test_savers_replaced_on_the_source_itself_are_called_not_written_out() -> None:
    r = random.Random(1)
    source = PythonRandomSource("own", r)
    save, load = source.savers()
    calls: list[str] = []

    def counted_save() -> object:
        calls.append("save")
        return save()

    source.savers = lambda: (counted_save, load)  # type: ignore[method-assign]
    sources = _swap.SourceSet([source])
    assert sources.inlines == (None,)
    values = sources.save_all()
    expected = r.random()
    sources.load_all(values)
    assert r.random() == expected and calls == ["save"]


@rng_fork.isolated
def _isolated_call() -> float:
    return random.random()


@rng_fork.isolated
def _isolated_steps() -> Iterator[float]:
    while True:
        yield random.random()


def _with_fork() -> None:
    with rng_fork.fork_rng():
        random.random()


_STREAM = rng_fork.RngStream(seed=0)


def _with_stream() -> None:
    with _STREAM:
        random.random()


@pytest.mark.parametrize("block", [_with_fork, _isolated_call, _with_stream, _isolated_steps().__next__])
def test_blocks_leave_no_reference_cycles_behind(block: Callable[[], object]) -> None:
    # A cycle per block would be freed only by the garbage collector: memory and collections
    # that grow with the number of forks in a loop.
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            block()
        assert gc.collect() == 0
    finally:
        gc.enable()
