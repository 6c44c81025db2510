"""@isolated for every kind of callable, and RngStream."""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import io
import pickle
import random
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rng_fork
from rng_fork import RngStream, _swap, fork_rng, isolated

from .helpers import (
    ValueSource,
    assert_invisible,
    draw_all,
    fork_open_in_another_thread,
    refused_unchanged,
    registered,
    seed_globals,
)


def _draws() -> float:
    draw_all()
    return torch.rand(1).item()


@pytest.mark.parametrize("form", ["bare", "called", "seeded"])
def test_decorator_forms(form: str) -> None:
    if form == "bare":
        fn = isolated(_draws)
    elif form == "called":
        fn = isolated()(_draws)
    else:
        fn = isolated(seed=4)(_draws)
    assert_invisible(fn, seed=1)


def test_seeded_calls_repeat() -> None:
    fn = isolated(seed=4)(_draws)
    assert fn() == fn()
    # Unseeded, each call starts from the caller's state, which the calls never move.
    assert isolated(_draws)() == isolated(_draws)()


def test_unseeded_call_starts_from_caller_state() -> None:
    seed_globals(1)
    expected = _draws()
    seed_globals(1)
    assert isolated(_draws)() == expected


def test_return_values_exceptions_and_metadata() -> None:
    @isolated
    def add(a: int, b: int = 2) -> int:
        """Adds."""
        torch.rand(1)
        return a + b

    @isolated
    def fail() -> None:
        torch.rand(1)
        raise KeyError("x")

    assert add(1) == 3
    assert add.__name__ == "add" and add.__doc__ == "Adds."
    assert str(inspect.signature(add)) == "(a: 'int', b: 'int' = 2) -> 'int'"
    with refused_unchanged(KeyError):
        fail()


def test_bad_arguments_fail_at_decoration() -> None:
    with pytest.raises(TypeError):
        isolated(seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        isolated(seed=-1)
    with pytest.raises(TypeError, match="object"):
        isolated(generators=[object()])
    with pytest.raises(TypeError, match="callable"):
        isolated(3)  # type: ignore[call-overload]


class Model:
    def __init__(self) -> None:
        self.calls = 0

    @isolated
    def method(self) -> float:
        self.calls += 1
        return _draws()

    @isolated
    @staticmethod
    def static_outer() -> float:
        return _draws()

    @staticmethod
    @isolated
    def static_inner() -> float:
        return _draws()

    @isolated
    @classmethod
    def class_outer(cls) -> str:
        _draws()
        return cls.__name__

    @classmethod
    @isolated
    def class_inner(cls) -> str:
        _draws()
        return cls.__name__


@pytest.mark.parametrize("name", ["method", "static_outer", "static_inner", "class_outer", "class_inner"])
def test_methods_static_and_class_methods(name: str) -> None:
    model = Model()
    assert_invisible(getattr(model, name), seed=1)
    assert_invisible(getattr(Model, name) if name != "method" else lambda: Model.method(model), seed=1)
    if name.startswith("class"):
        assert getattr(Model, name)() == "Model"


def test_partial_and_callable_objects_and_lru_cache() -> None:
    class Sampler:
        def __call__(self, n: int) -> list[float]:
            return torch.rand(n).tolist()

    for fn in (
        isolated(functools.partial(lambda n: torch.rand(n).tolist(), 3)),
        lambda: isolated(Sampler())(2),
        isolated(functools.lru_cache(maxsize=None)(lambda: _draws())),
        functools.lru_cache(maxsize=None)(isolated(lambda: _draws())),
    ):
        assert_invisible(fn, seed=1)


def test_fork_rng_as_a_decorator() -> None:
    @fork_rng(seed=2)
    def sample() -> float:
        return _draws()

    assert_invisible(sample, seed=1)
    assert sample() == sample()
    assert fork_rng(enabled=False)(_draws) is _draws


# --- generators ----------------------------------------------------------------


@isolated
def noisy_counter(n: int) -> Iterator[float]:
    for _ in range(n):
        torch.rand(5)
        np.random.rand()
        yield random.random()
    return


def test_generator_function_stays_one() -> None:
    assert inspect.isgeneratorfunction(noisy_counter)


def test_generator_never_moves_the_caller() -> None:
    def interleaved() -> list[object]:
        out: list[object] = []
        for value in noisy_counter(4):
            out.append((value, draw_all()))
        return out

    seed_globals(1)
    got = interleaved()
    seed_globals(1)
    expected_caller = [draw_all() for _ in range(4)]
    assert [caller for _, caller in got] == expected_caller


def test_generator_starts_from_caller_state_at_first_step() -> None:
    @isolated
    def gen() -> Iterator[float]:
        while True:
            yield torch.rand(1).item()

    seed_globals(1)
    g = gen()
    torch.rand(2)  # before the first step: the generator starts after this
    first = next(g)
    seed_globals(1)
    torch.rand(2)
    assert first == torch.rand(1).item()
    # and continues its own stream, ignoring the caller's draws in between
    seed_globals(1)
    torch.rand(2)
    own = [torch.rand(1).item() for _ in range(3)]
    seed_globals(1)
    g = gen()
    torch.rand(2)
    seq = [next(g)]
    torch.rand(100)
    seq += [next(g), next(g)]
    assert seq == own


def test_generator_protocol_send_throw_close_return() -> None:
    log: list[object] = []

    @isolated(seed=1)
    def echo() -> Iterator[object]:
        received = None
        try:
            while True:
                try:
                    received = yield (received, torch.rand(1).item())
                except ValueError as exc:
                    log.append(("caught", str(exc)))
                    received = "recovered"
        finally:
            torch.rand(3)
            log.append("closed")

    @isolated
    def delegating() -> Iterator[object]:
        result = yield from returning()
        yield ("result", result)

    def returning() -> Iterator[int]:
        yield 1
        torch.rand(1)
        return 42

    before = rng_fork.get_rng_state()
    g = echo()
    assert next(g)[0] is None
    assert g.send("hi")[0] == "hi"
    assert g.throw(ValueError("boom"))[0] == "recovered"
    g.close()
    assert log == [("caught", "boom"), "closed"]
    assert list(delegating()) == [1, ("result", 42)]
    assert rng_fork.get_rng_state() == before


def test_uncaught_throw_and_exceptions_propagate() -> None:
    @isolated
    def gen() -> Iterator[int]:
        torch.rand(1)
        yield 1
        raise RuntimeError("inside")

    before = rng_fork.get_rng_state()
    g = gen()
    next(g)
    with pytest.raises(RuntimeError, match="inside"):
        next(g)
    g = gen()
    next(g)
    with pytest.raises(KeyError):
        g.throw(KeyError("k"))
    assert rng_fork.get_rng_state() == before


def test_breaking_out_early_leaves_everything_intact() -> None:
    def block() -> None:
        for value in noisy_counter(10):
            if value >= 0:
                break

    assert_invisible(block, seed=1)


def test_seeded_generators_repeat() -> None:
    @isolated(seed=3)
    def gen() -> Iterator[float]:
        for _ in range(3):
            yield torch.rand(1).item()

    assert list(gen()) == list(gen()) == torch.rand(3, generator=torch.Generator().manual_seed(3)).tolist()


# --- coroutines ------------------------------------------------------------------


@isolated
async def noisy_task(steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(torch.rand(1).item())
        np.random.rand()
        await asyncio.sleep(0)
    return out


def test_coroutine_function_stays_one() -> None:
    assert inspect.iscoroutinefunction(noisy_task)


def test_concurrent_tasks_neither_see_nor_lose_draws() -> None:
    async def main() -> tuple[list[list[float]], object]:
        results = await asyncio.gather(noisy_task(4), noisy_task(4), noisy_task(2))
        return list(results), draw_all()

    seed_globals(1)
    expected_alone = asyncio.run(noisy_task(4))
    seed_globals(1)
    results, caller = asyncio.run(main())
    # Each task starts from the caller's state at its first step, and runs undisturbed.
    assert results[0] == results[1] == expected_alone
    assert results[2] == expected_alone[:2]
    seed_globals(1)
    assert caller == draw_all()


def test_coroutine_exceptions_and_cancellation() -> None:
    @isolated
    async def failing() -> None:
        torch.rand(1)
        await asyncio.sleep(0)
        raise LookupError("bad")

    @isolated
    async def sleeper() -> None:
        torch.rand(1)
        await asyncio.sleep(10)

    async def main() -> None:
        with pytest.raises(LookupError):
            await failing()
        task = asyncio.ensure_future(sleeper())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    before = rng_fork.get_rng_state()
    asyncio.run(main())
    assert rng_fork.get_rng_state() == before


def test_async_generators() -> None:
    @isolated(seed=2)
    async def agen(n: int) -> AsyncIterator[float]:
        for _ in range(n):
            await asyncio.sleep(0)
            yield torch.rand(1).item()

    async def consume() -> list[float]:
        out = []
        async for value in agen(3):
            torch.rand(7)
            out.append(value)
        early = agen(5)
        out.append(await early.__anext__())
        await early.aclose()
        return out

    assert inspect.isasyncgenfunction(agen)
    before_state = rng_fork.get_rng_state()
    seed_globals(1)
    got = asyncio.run(consume())
    expected = torch.rand(3, generator=torch.Generator().manual_seed(2)).tolist()
    assert got[:3] == expected and got[3] == expected[0]
    del before_state
    seed_globals(1)
    asyncio.run(consume())
    after = draw_all()
    seed_globals(1)
    torch.rand(7)
    torch.rand(7)
    torch.rand(7)
    assert after == draw_all()


def test_async_generator_athrow() -> None:
    @isolated
    async def agen() -> AsyncIterator[str]:
        while True:
            try:
                yield "value"
            except KeyError:
                torch.rand(1)
                yield "caught"

    async def main() -> list[str]:
        g = agen()
        first = await g.__anext__()
        second = await g.athrow(KeyError("k"))
        await g.aclose()
        return [first, second]

    before = rng_fork.get_rng_state()
    assert asyncio.run(main()) == ["value", "caught"]
    assert rng_fork.get_rng_state() == before


class _AsyncCall:
    async def __call__(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            out.append(torch.rand(1).item())
            await asyncio.sleep(0)
        return out


class _GeneratorCall:
    def __call__(self, n: int) -> Iterator[float]:
        for _ in range(n):
            yield torch.rand(1).item()


def _plain_decorator(fn: Callable[..., object]) -> Callable[..., object]:
    @functools.wraps(fn)
    def wrapper(*args: object) -> object:
        return fn(*args)

    return wrapper


@_plain_decorator
async def _decorated_coroutine(n: int) -> list[float]:
    return await _AsyncCall()(n)


async def _async_gen(n: int) -> AsyncIterator[float]:
    for _ in range(n):
        await asyncio.sleep(0)
        yield torch.rand(1).item()


def _returns_async_gen(n: int) -> AsyncIterator[float]:
    return _async_gen(n)


@pytest.mark.parametrize("kind", ["async __call__", "generator __call__", "plain decorator", "returns async gen"])
def test_callables_that_return_generators_or_coroutines_are_stepped(kind: str) -> None:
    # Their bodies run after the call returns; each step must still run in the isolation.
    fn: Any = {
        "async __call__": _AsyncCall(),
        "generator __call__": _GeneratorCall(),
        "plain decorator": _decorated_coroutine,
        "returns async gen": _returns_async_gen,
    }[kind]
    wrapped: Any = isolated(seed=2)(fn)

    async def interleaved() -> list[float]:
        if kind == "returns async gen":
            out = []
            async for value in wrapped(3):
                torch.rand(7)
                out.append(value)
            return out
        task = asyncio.ensure_future(wrapped(3))
        while not task.done():
            torch.rand(7)
            await asyncio.sleep(0)
        return list(task.result())

    def run() -> tuple[list[float], object]:
        seed_globals(1)
        if kind == "generator __call__":
            out = []
            for value in wrapped(3):
                torch.rand(7)
                out.append(value)
        else:
            out = asyncio.run(interleaved())
        return out, draw_all()

    got, after = run()
    assert got == torch.rand(3, generator=torch.Generator().manual_seed(2)).tolist()
    # The caller drew rand(7) between the steps; without isolation those would have moved.
    draws_between = {"async __call__": 4, "plain decorator": 4}.get(kind, 3)
    seed_globals(1)
    for _ in range(draws_between):
        torch.rand(7)
    assert after == draw_all()


# --- RngStream ---------------------------------------------------------------------


def test_stream_across_epochs_is_fresh_and_reproducible() -> None:
    def run(with_eval: bool) -> tuple[list[list[float]], list[float]]:
        seed_globals(0)
        eval_rng = RngStream(seed=5)
        evals, train = [], []
        for _ in range(3):
            train.append(torch.rand(1).item())
            if with_eval:
                with eval_rng:
                    evals.append(torch.rand(2).tolist())
        return evals, train

    evals, train = run(True)
    evals_again, train_again = run(True)
    _, train_alone = run(False)
    assert evals == evals_again
    assert evals[0] != evals[1] != evals[2]
    assert train == train_again == train_alone
    assert evals[0] + evals[1] == torch.rand(4, generator=torch.Generator().manual_seed(5)).tolist()


def test_unseeded_stream_starts_from_caller_state() -> None:
    stream = RngStream()
    seed_globals(1)
    torch.rand(3)
    with stream:
        first = torch.rand(2).tolist()
    seed_globals(1)
    torch.rand(3)
    assert first == torch.rand(2).tolist()


def test_stream_as_decorator_and_reentrant() -> None:
    stream = RngStream(seed=1)

    @stream
    def sample(depth: int) -> list[float]:
        value = torch.rand(1).tolist()
        return value + (sample(depth - 1) if depth else [])

    assert_invisible(lambda: sample(2), seed=1)
    assert sample(0) == torch.rand(4, generator=torch.Generator().manual_seed(1)).tolist()[3:]


def test_stream_checkpoint_round_trip() -> None:
    stream = RngStream(seed=1, generators=[np.random.default_rng(0)])
    assert stream.state_dict()["started"] is False
    with stream:
        torch.rand(3)
    buffer = io.BytesIO()
    torch.save(stream.state_dict(), buffer)
    with stream:
        expected = draw_all()
    buffer.seek(0)
    restored = RngStream(seed=1, generators=[np.random.default_rng(0)])
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    with restored:
        assert draw_all() == expected
    with pytest.raises(ValueError, match="seed"):
        restored.load_state_dict({"nope": 1})
    fresh = RngStream(seed=1)
    fresh.load_state_dict(RngStream(seed=1).state_dict())
    assert not fresh.started


def test_a_loaded_checkpoint_brings_its_seed() -> None:
    unstarted = RngStream(seed=5).state_dict()
    stream = RngStream(seed=0)
    stream.load_state_dict(unstarted)
    assert stream.seed == 5
    with stream:
        got = torch.rand(2)
    assert torch.equal(got, torch.rand(2, generator=torch.Generator().manual_seed(5)))
    unseeded = RngStream()
    unseeded.load_state_dict(RngStream(seed=7).state_dict())
    assert unseeded.seed == 7
    seeded = RngStream(seed=7)
    seeded.load_state_dict(RngStream().state_dict())
    assert seeded.seed is None


@pytest.mark.parametrize(
    ("seed", "error", "message"),
    [("garbage", TypeError, "'seed' must be an int, not str"), (True, TypeError, "not bool"),
     (2**32, ValueError, "-1 \\(none\\) or in \\[0, 2\\*\\*32\\)"), (-2, ValueError, "got -2")],
)
def test_a_bad_seed_entry_is_refused_before_anything_changes(seed: object, error: type, message: str) -> None:
    stream = RngStream(seed=1)
    with stream:
        torch.rand(1)
    own = stream._own
    for started in (True, False):
        sd = {**stream.state_dict(), "seed": seed, "started": started}
        if not started:
            sd["state"] = {}
        with pytest.raises(error, match=message):
            stream.load_state_dict(sd)
    assert stream._own is own and stream.seed == 1


def test_an_unstarted_checkpoint_with_a_state_is_refused() -> None:
    sd = RngStream(seed=1).state_dict()
    sd["state"] = rng_fork.get_rng_state().state_dict()
    with pytest.raises(ValueError, match="has not started"):
        RngStream(seed=1).load_state_dict(sd)


def test_a_stream_leaves_alone_a_source_unregistered_since_it_ran_and_seeds_one_registered() -> None:
    old, new = ValueSource("old_source", 1), ValueSource("new_source", 2)
    stream = RngStream(seed=7)
    with registered(old):
        with stream:
            old.value = 10  # the stream's state of old_source
        with registered(new):  # one source out, another in: the same number of sources
            pass
    with registered(new):
        old.value = 3
        with stream:
            assert old.value == 3  # no longer the stream's: not loaded, so never to be put back
            assert new.value == 7  # appeared since the stream ran: starts from the stream's seed
        assert (old.value, new.value) == (3, 2)


def test_a_stream_refuses_to_save_or_load_its_state_while_it_is_active() -> None:
    # Inside, its state is the one the block draws from: a checkpoint of the state it was
    # entered with would resume from the wrong place, silently.
    stream = RngStream(seed=0)
    with stream:
        torch.rand(1)
    saved = stream.state_dict()

    @stream
    def checkpoint_inside() -> None:
        torch.rand(3)
        with pytest.raises(RuntimeError, match="cannot save the state of an RngStream while it is active"):
            stream.state_dict()
        with pytest.raises(RuntimeError, match="cannot load the state of an RngStream while it is active"):
            stream.load_state_dict(saved)
        torch.rand(2)

    reference = RngStream()
    reference.load_state_dict(saved)
    with reference:
        torch.rand(3)
        torch.rand(2)
    checkpoint_inside()
    later = rng_fork.RngState.from_state_dict(stream.state_dict()["state"])
    assert later == rng_fork.RngState.from_state_dict(reference.state_dict()["state"])


def test_stream_load_validates_before_changing() -> None:
    stream = RngStream(seed=1)
    with stream:
        torch.rand(1)
    sd = stream.state_dict()
    sd["state"]["torch"]["state"] = sd["state"]["torch"]["state"][:10]
    with pytest.raises(ValueError, match="torch"):
        stream.load_state_dict(sd)
    with stream:
        got = torch.rand(1).item()
    g = torch.Generator().manual_seed(1)
    torch.rand(1, generator=g)
    assert got == torch.rand(1, generator=g).item()


def test_stream_checkpoint_from_a_machine_with_more_devices_loads() -> None:
    # A stream saved where CUDA was up (or with more GPUs) loads where those devices are absent.
    stream = RngStream(seed=1)
    with stream:
        torch.rand(1)
    sd = stream.state_dict()
    sd["state"]["cuda:7"] = {"type": "torch.Generator", "device": "cuda", "state": torch.zeros(16, dtype=torch.uint8)}
    restored = RngStream(seed=1, devices=[])
    with pytest.warns(rng_fork.RngForkWarning, match="skipped cuda:7"):
        restored.load_state_dict(sd)
    with stream:
        expected = draw_all()
    with restored:
        assert draw_all() == expected
    sd["started"] = "no"
    with pytest.raises(TypeError, match="'started' must be a bool, not str"):
        restored.load_state_dict(sd)


def test_stream_load_still_refuses_parts_it_cannot_place() -> None:
    with_generator = RngStream(seed=1, generators=[torch.Generator()])
    with with_generator:
        pass
    sd = with_generator.state_dict()
    plain = RngStream(seed=1)
    with pytest.raises(ValueError, match="'generator:0' is a generator object"):
        plain.load_state_dict(sd)
    sd["state"]["pyhton"] = sd["state"].pop("python")
    with pytest.raises(ValueError, match="'pyhton' does not exist"):
        RngStream(seed=1, generators=[torch.Generator()]).load_state_dict(sd)
    assert not plain.started


class _Holder:
    """What a model is to a stream: an object holding it and the generator it forks."""

    def __init__(self, seed: int | None) -> None:
        self.g = torch.Generator().manual_seed(7)
        self.r = random.Random(8)
        self.stream = RngStream(seed=seed, generators=[self.g, self.r])

    def draw(self) -> tuple[Any, ...]:
        with self.stream:
            return (*draw_all(), torch.rand(2, generator=self.g).tolist(), self.r.random())


def _through_pickle(obj: Any) -> Any:
    return pickle.loads(pickle.dumps(obj))


def _through_torch_save(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("copier", [copy.deepcopy, _through_pickle, _through_torch_save])
@pytest.mark.parametrize("seed", [None, 3])
@pytest.mark.parametrize("started", [False, True])
def test_a_copied_stream_goes_on_like_the_original_and_forks_the_copied_generators(
    copier: Callable[[Any], Any], seed: int | None, started: bool
) -> None:
    seed_globals(0)
    original = _Holder(seed)
    if started:
        original.draw()
    clone = copier(original)
    assert clone.stream is not original.stream and clone.g is not original.g
    # The copy's block draws from the copy's generators and puts them back; the original's are not touched.
    seed_globals(1)
    originals = rng_fork.get_rng_state(generators=[original.g, original.r])
    clones = rng_fork.get_rng_state(generators=[clone.g, clone.r])
    got = clone.draw()
    assert rng_fork.get_rng_state(generators=[clone.g, clone.r]) == clones
    assert rng_fork.get_rng_state(generators=[original.g, original.r]) == originals
    assert original.draw() == got  # from the same states, the same draws
    assert clone.stream.seed == seed


def test_an_active_stream_refuses_to_be_copied() -> None:
    stream = RngStream(seed=0)
    with stream:
        for copier in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(RuntimeError, match="active"):
                copier(stream)


def test_stream_bad_arguments() -> None:
    with pytest.raises(TypeError):
        RngStream(seed="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RngStream(generators=[1])


def test_a_stream_has_no_enabled_switch_to_set() -> None:
    # fork_rng's ``enabled`` is a stream's class attribute too (the mechanism reads it); set on
    # a stream, it would turn entries into no-ops while exits still closed blocks.
    stream = RngStream(seed=0)
    with pytest.raises(AttributeError, match="read-only"):
        stream.enabled = False  # type: ignore[misc]
    with stream:
        first = torch.rand(3)
    with stream:
        assert not torch.equal(torch.rand(3), first)


# --- threads ---------------------------------------------------------------------


@pytest.mark.usefixtures("thread_warning_reset")
def test_forks_in_two_threads_warn_once() -> None:
    with fork_open_in_another_thread(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fork_rng():
            pass
        with fork_rng():
            pass
    relevant = [w for w in caught if issubclass(w.category, rng_fork.RngForkWarning)]
    assert len(relevant) == 1
    assert "thread" in str(relevant[0].message)


@pytest.mark.usefixtures("thread_warning_reset")
def test_a_stream_open_in_another_thread_warns() -> None:
    stream = RngStream(seed=0)
    with fork_open_in_another_thread(stream):
        with pytest.warns(rng_fork.RngForkWarning, match="another thread") as caught, stream:
            pass
        assert caught[0].filename == __file__


@pytest.mark.usefixtures("thread_warning_reset")
@pytest.mark.parametrize("kind", ["fork_rng", "isolated"])
def test_the_thread_warning_points_at_the_users_line(kind: str) -> None:
    @isolated
    def call() -> None:
        pass

    with fork_open_in_another_thread(), pytest.warns(rng_fork.RngForkWarning, match="another thread") as caught:
        if kind == "fork_rng":
            with fork_rng():
                pass
        else:
            call()
    assert caught[0].filename == __file__


def test_each_call_of_a_recursive_isolated_function_is_undone() -> None:
    seen: list[bool] = []

    @isolated
    def f(depth: int) -> None:
        draw_all()
        if depth:
            mid = rng_fork.get_rng_state()
            f(depth - 1)
            seen.append(rng_fork.get_rng_state() == mid)

    assert_invisible(lambda: f(4))
    assert seen == [True] * 4 and _swap._layers == []


@pytest.mark.usefixtures("thread_warning_reset")
def test_calls_of_one_isolated_function_in_two_threads_each_close_their_own() -> None:
    # Every call enters the function's one fork object: the main thread's call ends while
    # the other thread's call is on top, and must close its own block, not that one.
    entered, release = threading.Event(), threading.Event()
    other = threading.Thread(target=lambda: f("other"))

    @isolated
    def f(who: str) -> None:
        random.random()
        if who == "main":
            other.start()
            entered.wait(10)
        else:
            entered.set()
            release.wait(10)

    before = random.getstate()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rng_fork.RngForkWarning)  # blocks in two threads: warned of
        f("main")
        assert random.getstate() == before
        assert [layer.thread for layer in _swap._layers] == [other.ident]
        release.set()
        other.join()
    assert _swap._layers == []


@pytest.mark.usefixtures("thread_warning_reset")
def test_no_warning_for_one_thread() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", rng_fork.RngForkWarning)
        with fork_rng(), fork_rng():
            pass
        asyncio.run(asyncio.wait_for(noisy_task(2), 5))


# --- property ----------------------------------------------------------------------

Action = tuple[str, int]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["caller", "gen", "task"]), st.integers(0, 2)), max_size=20))
def test_interleavings_never_change_the_caller(actions: list[Action]) -> None:
    @isolated
    def gen() -> Iterator[float]:
        while True:
            draw_all()
            yield torch.rand(1).item()

    @isolated
    async def task(steps: int) -> None:
        for _ in range(steps):
            draw_all()
            await asyncio.sleep(0)

    def run(include_isolated: bool) -> list[object]:
        seed_globals(3)
        gens = [gen() for _ in range(3)]
        caller: list[object] = []

        async def main() -> None:
            pending = []
            for kind, which in actions:
                if kind == "caller":
                    caller.append(draw_all())
                elif include_isolated and kind == "gen":
                    next(gens[which])
                elif include_isolated:
                    pending.append(asyncio.ensure_future(task(which + 1)))
                await asyncio.sleep(0)
            await asyncio.gather(*pending)
            caller.append(draw_all())

        asyncio.run(main())
        return caller

    assert run(True) == run(False)
