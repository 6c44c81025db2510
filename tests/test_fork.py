"""fork_rng: the block is invisible to the code after it."""

from __future__ import annotations

import copy
import pickle
import random
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rng_fork
from rng_fork import fork_rng
from rng_fork._checks import check_devices

from .helpers import (
    ValueSource,
    assert_invisible,
    draw_all,
    fork_open_in_another_thread,
    refused_unchanged,
    registered,
    seed_globals,
    through_torch_save,
)


def test_block_is_invisible() -> None:
    def block() -> None:
        with fork_rng():
            draw_all()
            torch.rand(100)
            np.random.rand(7)
            random.random()

    assert_invisible(block)


def test_block_starts_from_current_state() -> None:
    expected = draw_all()
    seed_globals(1234)
    with fork_rng():
        assert draw_all() == expected


@pytest.mark.parametrize("odd", [1, 3, 5])
def test_gaussian_caches_after_odd_draws(odd: int) -> None:
    def gaussians() -> None:
        for _ in range(odd):
            random.gauss(0, 1)
            np.random.randn()
            torch.randn(1)

    def block() -> None:
        with fork_rng():
            gaussians()

    assert_invisible(block, before=gaussians, seed=5)  # the later draws start with the cached Gaussians


def test_legacy_gauss_cache_only_change_is_restored() -> None:
    np.random.randn()  # fills the cache
    before = np.random.get_state()
    with fork_rng():
        np.random.randn()  # empties the cache, MT state unchanged
    after = np.random.get_state()
    assert after[3] == before[3] == 1
    assert after[4] == before[4]


def test_seeded_block_is_deterministic_and_invisible() -> None:
    inside = []
    for start in (1234, 99):
        seed_globals(start)
        with fork_rng(seed=7):
            inside.append(draw_all())
    assert inside[0] == inside[1]

    def block() -> None:
        with fork_rng(seed=7):
            draw_all()

    assert_invisible(block)


def test_seed_matches_plain_seeding() -> None:
    with fork_rng(seed=11):
        got = draw_all()
    seed_globals(11)
    assert got == draw_all()


@pytest.mark.parametrize("error", [ZeroDivisionError, KeyboardInterrupt])
def test_an_exception_restores_and_propagates(error: type[BaseException]) -> None:
    def block() -> None:
        with pytest.raises(error):
            with fork_rng():
                draw_all()
                raise error

    assert_invisible(block)


def test_reuse_and_nesting() -> None:
    fork = fork_rng()

    def block() -> None:
        with fork:
            draw_all()
        with fork:
            draw_all()
            with fork:
                torch.rand(3)
                with fork_rng(seed=3):
                    with fork:
                        random.random()
                    np.random.rand()
            random.random()

    assert_invisible(block)


def test_nested_inner_restores_to_outer_block_state() -> None:
    with fork_rng(seed=1):
        expected = draw_all()
    with fork_rng(seed=1):
        with fork_rng():
            draw_all()
        assert draw_all() == expected


def test_enabled_false_is_a_plain_block() -> None:
    with fork_rng(enabled=False):
        first = draw_all()
    seed_globals(1234)
    draw_all()
    assert draw_all() != first
    seed_globals(1234)
    with fork_rng(enabled=False):
        draw_all()
    second = draw_all()
    seed_globals(1234)
    draw_all()
    assert draw_all() == second


@pytest.mark.parametrize("seed", [True, np.bool_(True), torch.tensor(True), torch.tensor(1), 1.0, np.float64(1.0), "1"])
def test_non_int_seed_is_type_error(seed: object) -> None:
    with refused_unchanged(TypeError, match="seed"):
        fork_rng(seed=seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64])
def test_out_of_range_seed_is_value_error(seed: int) -> None:
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        fork_rng(seed=seed)


@pytest.mark.parametrize("seed", [np.int64(7), np.uint32(7)])
def test_numpy_integer_seeds_are_ints(seed: object) -> None:
    with fork_rng(seed=7):
        expected = draw_all()
    with fork_rng(seed=seed):  # type: ignore[arg-type]
        assert draw_all() == expected


def test_bounds_of_seed_are_accepted() -> None:
    for seed in (0, 2**32 - 1):
        with fork_rng(seed=seed):
            draw_all()


@pytest.mark.parametrize("bad", [object(), "gen", 3, [torch.rand(2)], random.SystemRandom()])
def test_bad_generators_are_type_errors_naming_the_type(bad: object) -> None:
    generators = bad if isinstance(bad, list) else [bad]
    with pytest.raises(TypeError) as info:
        fork_rng(generators=generators)
    name = type(generators[0]).__qualname__ if not isinstance(bad, random.SystemRandom) else "SystemRandom"
    assert name in str(info.value)


def test_generators_must_be_iterable() -> None:
    with pytest.raises(TypeError, match="iterable"):
        fork_rng(generators=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "single",
    [
        lambda: torch.Generator(),
        lambda: random.Random(0),
        lambda: np.random.default_rng(0),
        lambda: torch.utils.data.RandomSampler(range(10)),
        lambda: torch.utils.data.DataLoader(range(10), shuffle=True),
    ],
)
def test_one_object_instead_of_a_list_is_refused_before_drawing(single: Callable[[], object]) -> None:
    obj = single()
    # Iterating a sampler or a loader would have drawn.
    with refused_unchanged(TypeError, match=rf"not one {type(obj).__qualname__}: pass generators=\[\.\.\.\]"):
        fork_rng(generators=obj)  # type: ignore[arg-type]
    with fork_rng(generators=[obj]):  # as the message says
        pass


def test_samplers_are_forked_and_datasets_refused() -> None:
    g = torch.Generator().manual_seed(0)
    sampler = torch.utils.data.RandomSampler(range(10), generator=g)
    expected = list(sampler)
    g.manual_seed(0)
    with fork_rng(generators=[torch.utils.data.BatchSampler(sampler, 2, False)]):
        list(sampler)
    assert list(sampler) == expected

    class NumpySampler(torch.utils.data.Sampler[int]):
        def __init__(self, generator: object) -> None:
            self.generator = generator

        def __iter__(self) -> Iterator[int]:
            return iter(self.generator.permutation(4).tolist())  # type: ignore[attr-defined]

        def __len__(self) -> int:
            return 4

    numpy_sampler = NumpySampler(np.random.default_rng(0))
    order = list(numpy_sampler)
    numpy_sampler.generator = np.random.default_rng(0)
    with fork_rng(generators=[torch.utils.data.DataLoader(range(4), sampler=numpy_sampler)]):
        list(numpy_sampler)
    assert list(numpy_sampler) == order
    with pytest.raises(TypeError, match="not str"):
        fork_rng(generators=[NumpySampler("not a generator")])
    # A loader's sampler may be any iterable of indices: nothing to fork there, and no error.
    for loader in (
        torch.utils.data.DataLoader(range(4), sampler=[3, 1, 2, 0]),
        torch.utils.data.DataLoader(range(4), batch_sampler=[[0, 1], [2, 3]]),
    ):
        with fork_rng(generators=[loader]):
            list(loader)
    dataset = torch.utils.data.TensorDataset(torch.arange(4))
    for generators in (dataset, [dataset]):
        with pytest.raises(TypeError, match="a torch.utils.data.DataLoader or Sampler, not TensorDataset"):
            fork_rng(generators=generators)  # type: ignore[arg-type]


def test_numpy_generator_spawns_are_forked_and_snapshotted() -> None:
    # Generator.spawn moves only the SeedSequence's child counter, not the bit generator's state.
    rng = np.random.default_rng(0)
    expected = rng.spawn(1)[0].random()
    rng = np.random.default_rng(0)
    with fork_rng(generators=[rng]):
        rng.spawn(2)
    assert rng.spawn(1)[0].random() == expected
    state = rng_fork.get_rng_state(generators=[rng])
    after = rng.spawn(1)[0].random()
    rng_fork.set_rng_state(rng_fork.RngState.from_state_dict(state.state_dict()), generators=[rng])
    assert rng.spawn(1)[0].random() == after
    with fork_rng(seed=3, generators=[rng]):
        child = rng.spawn(2)[0].random()  # as many children as rng had: only the SeedSequence tells them apart
    assert child == np.random.default_rng(3).spawn(1)[0].random()
    # After a seeded block the generator's own SeedSequence is back, not the seed's.
    reference = np.random.default_rng(0)
    reference.spawn(2)  # the two children rng kept: one before the snapshot, one after it
    assert rng.spawn(1)[0].random() == reference.spawn(1)[0].random()
    entropy = np.random.default_rng([1, 2**70])  # entropy as a list of ints, one beyond 64 bits
    entropy.spawn(1)
    state = rng_fork.get_rng_state(generators=[entropy])
    expected = entropy.spawn(1)[0].random()
    rng_fork.set_rng_state(through_torch_save(state.state_dict()), generators=[entropy])
    assert entropy.spawn(1)[0].random() == expected


class _Lcg(random.Random):
    """A generator of its own devising, as the random module's docs describe."""

    def __init__(self, x: int = 0) -> None:
        self.x = x
        super().__init__(x)

    def seed(self, a: object = None, version: int = 2) -> None:
        self.x = hash(a) % 2**31

    def random(self) -> float:
        self.x = (self.x * 1103515245 + 12345) % 2**31
        return self.x / 2**31

    def getstate(self) -> int:  # type: ignore[override]
        return self.x

    def setstate(self, state: int) -> None:  # type: ignore[override]
        self.x = state


def test_a_random_subclass_with_its_own_state_is_forked_and_snapshotted() -> None:
    rng = _Lcg(5)
    with fork_rng(generators=[rng]):
        rng.random()
    assert rng.x == 5
    state = rng_fork.get_rng_state(generators=[rng])
    expected = [rng.random() for _ in range(3)]
    rng_fork.set_rng_state(state, generators=[rng])
    assert [rng.random() for _ in range(3)] == expected
    kind = "_Lcg"
    assert state.state_dict()["generator:0"] == {"type": "random.Random.getstate", "value": (kind, 5)}
    before = rng.x
    with fork_rng(seed=3, generators=[rng]):
        assert rng.x == hash(3) % 2**31
    assert rng.x == before
    # Another subclass's state is refused while validating, before any generator changes.
    class Other(_Lcg):
        pass

    torch_before = torch.get_rng_state()
    with pytest.raises(ValueError, match=f"'generator:0': a {kind} state cannot go into a .*Other"):
        rng_fork.set_rng_state(state, generators=[Other(1)])
    assert torch.equal(torch.get_rng_state(), torch_before)


def test_a_random_subclass_whose_state_is_mutable_is_refused_for_snapshots() -> None:
    class Live(_Lcg):
        def getstate(self) -> dict[str, int]:  # type: ignore[override]
            return {"x": self.x}  # unhashable: a snapshot holding it could change after the fact

        def setstate(self, state: dict[str, int]) -> None:  # type: ignore[override]
            self.x = state["x"]

    rng = Live(1)
    with fork_rng(generators=[rng]):  # a fork only hands the value back
        rng.random()
    assert rng.x == 1
    with pytest.raises(TypeError, match="must be hashable, not dict"):
        rng_fork.get_rng_state(generators=[rng])


@pytest.mark.parametrize(
    ("devices", "error"),
    [("cuda:0", TypeError), ([True], TypeError), ([1.5], TypeError), ([-1], ValueError), (["cuda"], ValueError)],
)
def test_bad_devices(devices: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        fork_rng(devices=devices)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    indices=st.lists(st.one_of(st.integers(-3, 6), st.booleans(), st.just(np.int64(2)), st.just("cpu:1"))),
    form=st.sampled_from([list, tuple, iter]),
)
def test_devices_given_as_plain_ints_check_as_any_other_iterable(indices: list[object], form: type) -> None:
    # list, tuple and range take a shortcut for plain non-negative ints; an iterator never does.
    def checked(devices: object) -> object:
        try:
            return check_devices(devices)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            return type(exc), str(exc)

    assert checked(form(indices)) == checked(iter(indices))


@pytest.mark.parametrize("span", [range(3), range(0), range(2, 7, 2), range(-2, 2), range(3, -1, -1), range(4, 1)])
def test_devices_given_as_a_range_check_as_its_items(span: range) -> None:
    def checked(devices: object) -> object:
        try:
            return check_devices(devices)  # type: ignore[arg-type]
        except ValueError as exc:
            return str(exc)

    assert checked(span) == checked(list(iter(span)))


def test_devices_of_an_absent_backend_are_ignored() -> None:
    if torch.cuda.device_count():
        pytest.skip("this machine has CUDA devices")

    def block() -> None:
        with fork_rng(devices=[0]):
            draw_all()

    assert_invisible(block)


@pytest.mark.cuda
def test_missing_device_raises_before_anything_changes() -> None:
    count = torch.cuda.device_count()
    with refused_unchanged(ValueError, match=f"no device {count}"):
        with fork_rng(devices=[count], seed=3):
            pass


def test_empty_devices_forks_the_cpu_sources() -> None:
    def block() -> None:
        with fork_rng(devices=[]):
            draw_all()

    assert_invisible(block)


def test_generator_objects_are_forked() -> None:
    def generators() -> list[object]:
        return [
            torch.Generator().manual_seed(1),
            np.random.default_rng(2),
            np.random.RandomState(3),
            random.Random(4),
            np.random.PCG64(5),
        ]

    def draws(tg: torch.Generator, ng: np.random.Generator, rs: np.random.RandomState, pr: random.Random,
              bg: np.random.PCG64) -> None:
        torch.rand(2, generator=tg)
        ng.normal()
        rs.randn()
        pr.gauss(0, 1)
        bg.random_raw()

    def block(*gens: Any) -> None:
        with fork_rng(generators=gens):
            draws(*gens)
            draws(*gens)

    assert_invisible(block, before=draws, generators=generators)  # draws before: caches filled


def test_seed_reaches_generator_objects() -> None:
    tg = torch.Generator()
    ng = np.random.default_rng()
    pr = random.Random()
    rs = np.random.RandomState()
    with fork_rng(seed=9, generators=[tg, ng, pr, rs]):
        got = [torch.rand(1, generator=tg).item(), ng.random(), pr.random(), rs.rand()]
    expected = [
        torch.rand(1, generator=torch.Generator().manual_seed(9)).item(),
        np.random.Generator(np.random.PCG64(9)).random(),
        random.Random(9).random(),
        np.random.RandomState(9).rand(),
    ]
    assert got == expected


class _FlakySource(ValueSource):
    """A source whose restore fails once ``fail`` is set (by the block under test)."""

    def __init__(self) -> None:
        super().__init__("flaky")
        self.fail = False

    def load(self, part: object) -> None:
        if self.fail:
            raise OSError("disk on fire")
        super().load(part)


def test_restore_failure_restores_the_rest_and_chains() -> None:
    flaky = _FlakySource()

    def block() -> pytest.ExceptionInfo[rng_fork.RngRestoreError]:
        with pytest.raises(rng_fork.RngRestoreError) as info:
            with fork_rng():
                draw_all()
                flaky.fail = True
                raise ValueError("block failed")
        return info

    with registered(flaky):
        info = assert_invisible(block)  # every other source was restored although one failed
    assert list(info.value.failures) == ["flaky"]
    assert "disk on fire" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_repr() -> None:
    assert "seed=3" in repr(fork_rng(seed=3))


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda fork: pickle.loads(pickle.dumps(fork))])
def test_a_copied_fork_has_the_same_arguments_and_forks_the_copied_generators(
    copier: Callable[[Any], Any],
) -> None:
    g = torch.Generator().manual_seed(7)
    holder = {"g": g, "fork": fork_rng(seed=3, enabled=False, devices=[]), "with_g": fork_rng(generators=[g])}
    clone = copier(holder)
    assert (clone["fork"].seed, clone["fork"].enabled, clone["fork"].devices) == (3, False, ())
    copied_g = clone["g"]
    assert copied_g is not g
    before, copied_before = g.get_state(), copied_g.get_state()
    with clone["with_g"]:
        torch.rand(3, generator=copied_g)
        g_after_copy_drew = g.get_state()
        torch.rand(3, generator=g)  # not the copy's to protect
    assert torch.equal(copied_g.get_state(), copied_before)
    assert torch.equal(g_after_copy_drew, before) and not torch.equal(g.get_state(), before)


def test_only_generator_objects_sources_name_their_objects() -> None:
    from rng_fork.sources import objects_of, sources_of

    g, r = torch.Generator(), random.Random(0)
    assert objects_of(sources_of([g, r])) == (g, r)
    with pytest.raises(TypeError, match="not the source of a generator object"):
        objects_of((ValueSource("value"),))


def test_registering_a_source_after_a_fork_is_seen_by_the_next() -> None:
    with fork_rng():
        pass
    holder = _FlakySource()
    with registered(holder):
        holder.value = 5
        with fork_rng(seed=1):
            assert holder.value == 1
        assert holder.value == 5
    with fork_rng(seed=1):
        holder.value = 9
    assert holder.value == 9  # no longer registered: no longer forked


def test_disabling_inside_the_block_still_restores() -> None:
    def block() -> None:
        fork = fork_rng()
        with fork:
            draw_all()
            fork.enabled = False

    assert_invisible(block)


def test_global_numpy_on_another_bit_generator() -> None:
    from numpy.random.mtrand import get_bit_generator, set_bit_generator

    original = get_bit_generator()
    set_bit_generator(np.random.PCG64(3))
    try:
        np.random.standard_normal()  # leaves a cached Gaussian
        expected = (np.random.standard_normal(), np.random.random())
        set_bit_generator(np.random.PCG64(3))
        np.random.standard_normal()
        with fork_rng():
            np.random.random(5)
            np.random.standard_normal()
        assert (np.random.standard_normal(), np.random.random()) == expected
        # Snapshots hold MT19937 states only: a clear error instead of a silent gap.
        with pytest.raises(TypeError, match="PCG64.*MT19937"):
            rng_fork.get_rng_state()
    finally:
        set_bit_generator(original)
    state = rng_fork.get_rng_state()
    set_bit_generator(np.random.PCG64(3))
    try:
        before = np.random.get_state(legacy=False)
        with pytest.raises(ValueError, match="numpy.*PCG64"):
            rng_fork.set_rng_state(state)
        assert str(np.random.get_state(legacy=False)) == str(before)
    finally:
        set_bit_generator(original)


def test_global_numpy_on_another_bit_generator_seeded_and_in_a_stream() -> None:
    from numpy.random.mtrand import get_bit_generator, set_bit_generator

    original = get_bit_generator()
    set_bit_generator(np.random.PCG64(3))
    try:
        with fork_rng(seed=4):
            first = np.random.random()
        with fork_rng(seed=4):
            assert np.random.random() == first
        expected = np.random.random()
        set_bit_generator(np.random.PCG64(3))
        stream = rng_fork.RngStream(seed=1)
        with stream:
            np.random.random(3)
        with stream:
            np.random.standard_normal()
        assert np.random.random() == expected
    finally:
        set_bit_generator(original)


@pytest.mark.parametrize("kinds", [("MT19937", "PCG64"), ("PCG64", "MT19937"), ("MT19937", "MT19937")])
def test_a_block_that_swaps_numpys_bit_generator_is_undone(kinds: tuple[str, str]) -> None:
    from numpy.random.mtrand import get_bit_generator, set_bit_generator

    original = get_bit_generator()
    before, inside = (getattr(np.random, kind) for kind in kinds)
    try:
        set_bit_generator(before(5))
        np.random.standard_normal()  # a cached Gaussian, to be kept
        expected_bg = get_bit_generator()
        state = np.random.get_state(legacy=False)
        with fork_rng():
            set_bit_generator(inside(6))
            np.random.random(4)
        assert get_bit_generator() is expected_bg
        assert str(np.random.get_state(legacy=False)) == str(state)
    finally:
        set_bit_generator(original)


@pytest.mark.usefixtures("thread_warning_reset")
def test_a_warning_turned_into_an_error_changes_nothing() -> None:
    from rng_fork import _swap

    def block() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", rng_fork.RngForkWarning)
            with pytest.raises(rng_fork.RngForkWarning, match="thread"):
                with fork_rng(seed=0):
                    pass

    with fork_open_in_another_thread():
        assert_invisible(block)
    assert not _swap._layers


def test_a_block_may_end_in_another_thread() -> None:
    import threading

    from rng_fork import _swap

    def body() -> object:
        with fork_rng():
            torch.rand(3)
            yield

    def block() -> None:
        steps = body()
        next(steps)  # entered here
        finisher = threading.Thread(target=lambda: next(steps, None))  # exited there
        finisher.start()
        finisher.join()

    assert_invisible(block)
    assert not _swap._layers


@pytest.mark.usefixtures("thread_warning_reset")
def test_an_exit_finds_its_block_while_another_thread_closes_blocks_above_it() -> None:
    # The exit looks for its block below another thread's; that thread is switched in right
    # there (a trace stands for the GIL switch at the loop) and closes its three blocks.
    import inspect
    import sys
    import threading

    from rng_fork import _swap

    lines, first = inspect.getsourcelines(_swap.open_layer)
    loop = first + next(i for i, line in enumerate(lines) if line.lstrip().startswith("for "))
    b_open, b_go, b_done = threading.Event(), threading.Event(), threading.Event()
    switched: list[int] = []

    def other_thread() -> None:
        with fork_rng(), fork_rng(), fork_rng():
            b_open.set()
            b_go.wait(10)
        b_done.set()

    def switch_at_the_loop(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is _swap.open_layer.__code__:
            if event == "line" and frame.f_lineno > loop and not switched:
                switched.append(frame.f_lineno)
                b_go.set()
                b_done.wait(10)
            return switch_at_the_loop
        return switch_at_the_loop if event == "call" else None

    mine = torch.Generator().manual_seed(0)
    before = mine.get_state()
    block = fork_rng(generators=[mine])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rng_fork.RngForkWarning)
        block.__enter__()
        torch.rand(1, generator=mine)
        thread = threading.Thread(target=other_thread)
        thread.start()
        b_open.wait(10)
        sys.settrace(switch_at_the_loop)
        try:
            block.__exit__(None, None, None)
        finally:
            sys.settrace(None)
            b_go.set()
            thread.join()
    assert switched, "the exit did not look below the other thread's blocks"
    assert torch.equal(mine.get_state(), before)
    assert not _swap._layers


def test_a_thread_stack_pops_its_own_item_while_another_thread_pops_theirs() -> None:
    # What assert_untouched and trace objects keep per thread: the main thread looks for its
    # item below another thread's three, and that thread pops them right then.
    import sys
    import threading

    from rng_fork._swap import ThreadStack

    stack: ThreadStack[str] = ThreadStack()
    stack.push("main's")
    pushed, go, done = threading.Event(), threading.Event(), threading.Event()
    popped: list[str | None] = []
    switched: list[bool] = []

    def other_thread() -> None:
        for item in ("b1", "b2", "b3"):
            stack.push(item)
        pushed.set()
        go.wait(10)
        popped.extend(stack.pop_own() for _ in range(3))
        done.set()

    def switch_while_looking(frame: Any, event: str, arg: Any) -> Any:
        caller = frame.f_back
        looking = frame.f_code.co_name == "<genexpr>" and caller is not None
        if looking and caller.f_code is ThreadStack.pop_own.__code__ and event == "line" and not switched:
            switched.append(True)
            go.set()
            done.wait(10)
        return switch_while_looking

    thread = threading.Thread(target=other_thread)
    thread.start()
    pushed.wait(10)
    sys.settrace(switch_while_looking)
    try:
        mine = stack.pop_own()
    finally:
        sys.settrace(None)
        go.set()
        thread.join()
    assert switched
    assert mine == "main's" and popped == ["b3", "b2", "b1"] and not stack


def test_a_registration_while_a_plan_is_made_is_not_lost() -> None:
    class Registering(rng_fork.OneGenerator):
        def inert(self) -> bool:  # asked while a plan is made
            if "flaky" not in [s.name for s in rng_fork.registered_sources()]:
                rng_fork.register_source(_FlakySource())
            return False

    rng_fork.register_source(Registering(ValueSource("registering")))
    try:
        with fork_rng():
            pass
        flaky = next(s for s in rng_fork.registered_sources() if s.name == "flaky")
        assert isinstance(flaky, _FlakySource)
        flaky.value = 3
        with fork_rng(seed=8):
            assert flaky.value == 8
        assert flaky.value == 3
    finally:
        rng_fork.unregister_source("registering")
        rng_fork.unregister_source("flaky")


def test_fork_rng_objects_can_be_weakly_referenced() -> None:
    import weakref

    fork = fork_rng()
    assert weakref.ref(fork)() is fork


def test_a_randomstate_on_another_bit_generator_forks_exactly_and_refuses_snapshots() -> None:
    rs = np.random.RandomState(np.random.PCG64(3))
    rs.standard_normal()  # a cached Gaussian, to be kept
    expected = np.random.RandomState(np.random.PCG64(3))
    expected.standard_normal()
    with fork_rng(generators=[rs]):
        rs.standard_normal(5)
    assert rs.standard_normal(3).tolist() == expected.standard_normal(3).tolist()
    with pytest.raises(TypeError, match="generator:0: this RandomState draws from PCG64: snapshots"):
        rng_fork.get_rng_state(generators=[rs])
