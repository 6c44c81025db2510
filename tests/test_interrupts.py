"""A KeyboardInterrupt anywhere never leaves a generator as a block left it.

A SIGINT reaches Python code when the interpreter runs the SIGINT handler at a
bytecode boundary, the first instruction of a function included. The injected
interrupts here do exactly that from a trace function: at the N-th ``call`` or
``line`` event, the handler installed at that moment is called with the frame
the event is in, as CPython would call it there. Every event of every path is
tried; then real SIGINTs sent at random moments by another thread.
"""

from __future__ import annotations

import functools
import itertools
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import numpy as np
import pytest
import torch

import rng_fork
from rng_fork import RngStream, _interrupts, _swap, fork_rng, isolated

from .helpers import HANDLER_PATHS, ValueSource, assert_invisible, handler_path, registered, seed_globals

PACKAGE = rng_fork.__file__.rsplit("/", 1)[0]


def states() -> tuple[object, ...]:
    """Every global generator's state through the official APIs, Gaussian caches included."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    return (random.getstate(), key.tobytes(), pos, has_gauss, gauss, torch.get_rng_state().numpy().tobytes())


def draw_everything() -> None:
    random.gauss(0, 1)
    np.random.randn()
    torch.randn(3)


def assert_settled() -> None:
    """Nothing left open, held or installed."""
    assert not _swap._layers
    assert _interrupts._open == 0
    assert not _interrupts.held()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class InjectedAt:
    """Delivers one SIGINT at the ``target``-th place where the interpreter could run its handler.

    CPython runs it as a function starts (``call`` events) and after a call into C
    returns (``c_return``); in the functions rng_fork protects, every line (``line``)
    counts too, a stricter test than any real signal.
    """

    def __init__(self, target: int, action: Callable[[FrameType], object] | None = None, lines: bool = True) -> None:
        self.target = target
        self.lines = lines
        self.events = 0
        self.delivered = False
        self.action = action or sigint_at

    def trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        if (event == "call" and traced(frame)) or (
            event == "line" and self.lines and frame.f_code in _interrupts._protected
        ):
            self._maybe_deliver(frame)
        return self.trace

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_return" and traced(frame):
            self._maybe_deliver(frame)

    def _maybe_deliver(self, frame: FrameType) -> None:
        at = self.events
        self.events += 1
        if at == self.target and not self.delivered:
            self.delivered = True
            self.action(frame)


def sigint_at(frame: FrameType) -> None:
    """What CPython does with a SIGINT that arrives in ``frame``: call the handler installed now."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)


def ours(frame: FrameType) -> bool:
    return frame.f_code.co_filename.startswith(PACKAGE)


def traced(frame: FrameType) -> bool:
    """rng_fork's code and the scenarios' own code (the blocks' bodies and boundaries)."""
    return ours(frame) or frame.f_code.co_filename == __file__


def run_injected(
    scenario: Callable[[], object], target: int, action: Callable[[FrameType], object] | None = None,
    lines: bool = True,
) -> tuple[bool, bool, int]:
    """Run ``scenario`` with a SIGINT (or ``action``) at place ``target``: (delivered, interrupted,
    places seen). Without ``lines``, only where CPython itself runs handlers (no line counts)."""
    injector = InjectedAt(target, action, lines)
    interrupted = False
    sys.settrace(injector.trace)
    sys.setprofile(injector.profile)
    try:
        scenario()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        sys.setprofile(None)
        sys.settrace(None)
    return injector.delivered, interrupted, injector.events


def first_protected_place(scenario: Callable[[], object]) -> int:
    """The number of places ``scenario`` passes before it first runs code rng_fork protects."""
    injector = InjectedAt(-1)
    found: list[int] = []
    deliver = injector._maybe_deliver

    def record(frame: FrameType) -> None:
        if not found and frame.f_code in _interrupts._protected:
            found.append(injector.events)
        deliver(frame)

    injector._maybe_deliver = record  # type: ignore[method-assign]
    sys.settrace(injector.trace)
    sys.setprofile(injector.profile)
    try:
        scenario()
    finally:
        sys.setprofile(None)
        sys.settrace(None)
    return found[0]


def every_event(scenario: Callable[[], object], check: Callable[[], None]) -> int:
    """Interrupt ``scenario`` at each place in turn, running ``check`` after each; the count."""
    run_injected(scenario, -1)  # the first run may take paths later runs skip (plans are made once)
    check()
    for target in itertools.count():
        delivered, interrupted, _ = run_injected(scenario, target)
        if not delivered:  # past the last place
            assert target > 20, "the trace does not see the scenario"
            return target
        assert interrupted, f"a SIGINT at place {target} was lost"
        check()
        assert_settled()
    raise AssertionError("unreachable")


def stays_unchanged(scenario: Callable[[], object]) -> None:
    seed_globals(7)
    before = states()

    def check() -> None:
        assert states() == before
        seed_globals(7)

    every_event(scenario, check)


def fork_block() -> None:
    with fork_rng():
        draw_everything()


def seeded_fork_block() -> None:
    with fork_rng(seed=3):
        draw_everything()


def nested_forks() -> None:
    with fork_rng():
        draw_everything()
        with fork_rng(seed=1):
            draw_everything()
        draw_everything()


def forked_generators() -> None:
    own = (torch.Generator().manual_seed(1), np.random.default_rng(2), random.Random(3))
    before = (own[0].get_state(), own[1].bit_generator.state, own[2].getstate())
    try:
        with fork_rng(generators=own):
            torch.rand(2, generator=own[0])
            own[1].random()
            own[2].random()
            draw_everything()
    finally:
        assert torch.equal(own[0].get_state(), before[0])
        assert own[1].bit_generator.state == before[1]
        assert own[2].getstate() == before[2]


@isolated
def isolated_call() -> None:
    draw_everything()


@isolated(seed=4)
def isolated_steps() -> Iterator[None]:
    draw_everything()
    yield
    draw_everything()
    yield


def isolated_generator() -> None:
    for _ in isolated_steps():
        pass


@pytest.mark.parametrize(
    "scenario",
    [fork_block, seeded_fork_block, nested_forks, forked_generators, isolated_call, isolated_generator],
)
def test_a_sigint_at_any_event_leaves_the_caller_unchanged(scenario: Callable[[], None]) -> None:
    stays_unchanged(scenario)


def stream_twice(stream: RngStream) -> None:
    for _ in range(2):
        with stream:
            draw_everything()


def stream_entered_again_below_a_fork(stream: RngStream) -> None:
    with stream:
        draw_everything()
        with fork_rng():
            draw_everything()
            with stream:
                draw_everything()
                with stream:
                    torch.rand(1)
            draw_everything()


@pytest.mark.parametrize(
    ("scenario", "seed"), [(stream_twice, None), (stream_twice, 5), (stream_entered_again_below_a_fork, 5)]
)
def test_a_sigint_at_any_event_of_a_stream_leaves_the_caller_unchanged(
    scenario: Callable[[RngStream], None], seed: int | None
) -> None:
    stream = RngStream(seed=seed)  # one stream, entered again by every run
    stays_unchanged(lambda: scenario(stream))


@pytest.mark.parametrize(
    "scenario",
    [
        fork_block, seeded_fork_block, nested_forks, isolated_call, isolated_generator,
        functools.partial(stream_twice, RngStream(seed=5)),
        functools.partial(stream_entered_again_below_a_fork, RngStream(seed=5)),
    ],
    ids=["fork", "seeded_fork", "nested", "isolated_call", "isolated_generator", "stream", "stream_below_fork"],
)
def test_a_sigint_a_handler_only_records_at_any_event_still_leaves_the_caller_unchanged(
    scenario: Callable[[], None],
) -> None:
    # A handler that returns (a training loop's "stop after this step") raises nothing:
    # the block runs on, forked, and each SIGINT reaches the handler exactly once.
    calls: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        seed_globals(7)
        before = states()
        run_injected(scenario, -1)
        for target in itertools.count():
            seed_globals(7)
            calls.clear()
            delivered, interrupted, _ = run_injected(scenario, target)
            if not delivered:
                assert target > 20, "the trace does not see the scenario"
                break
            assert not interrupted and calls == [signal.SIGINT], f"place {target}: {calls}"
            assert states() == before, f"place {target}"
            assert not _swap._layers and _interrupts._open == 0 and not _interrupts.held(), f"place {target}"
            assert not _interrupts.installed()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_an_interrupted_first_entry_leaves_a_seeded_stream_unstarted() -> None:
    stream = RngStream(seed=5)

    def enter_once() -> None:
        with stream:
            torch.rand(1)

    seed_globals(7)
    before = states()
    run_injected(enter_once, -1)
    seed_globals(7)
    unstarted_after = 0
    for target in itertools.count():
        stream = RngStream(seed=5)
        if not run_injected(enter_once, target)[0]:
            break
        assert states() == before
        assert_settled()
        if not stream.started:
            unstarted_after += 1
            with stream:  # it starts from its seed as if never entered
                assert torch.equal(torch.rand(1), torch.rand(1, generator=torch.Generator().manual_seed(5)))
        seed_globals(7)
    assert unstarted_after  # some interrupts land before the block opened


def test_a_sigint_while_loading_a_snapshot_raises_after_every_source_is_loaded() -> None:
    seed_globals(11)
    target = rng_fork.get_rng_state()
    wanted = states()

    def load() -> None:
        seed_globals(7)
        rng_fork.set_rng_state(target)

    run_injected(load, -1)
    for at in itertools.count():
        delivered, interrupted, _ = run_injected(load, at)
        if not delivered:
            break
        assert interrupted
        # Before the load started, the seeding stands; once it started, it finishes.
        assert states() in (wanted, states_after_seed(7))
        assert_settled()


def states_after_seed(seed: int) -> tuple[object, ...]:
    seed_globals(seed)
    return states()


def test_a_sigint_while_a_stream_loads_its_checkpoint() -> None:
    saved = RngStream(seed=3)
    with saved:
        torch.rand(2)
    checkpoint = saved.state_dict()
    seed_globals(7)
    before = states()
    stream = RngStream(seed=0)

    def load() -> None:
        stream.load_state_dict(checkpoint)

    run_injected(load, -1)
    # Validation comes first and changes nothing: every 10th place there, every place after it.
    validated = first_protected_place(load)
    for at in itertools.count():
        if at < validated and at % 10:
            continue
        stream = RngStream(seed=0)
        if not run_injected(load, at)[0]:
            break
        assert states() == before
        assert_settled()
        if stream.started:  # loaded whole, or not at all
            loaded = rng_fork.RngState.from_state_dict(stream.state_dict()["state"])
            assert loaded == rng_fork.RngState.from_state_dict(checkpoint["state"])


class _InterruptedOnce(ValueSource):
    """A third-party source whose restore is interrupted by a KeyboardInterrupt of its own, once."""

    def __init__(self, name: str = "interrupted_once") -> None:
        super().__init__(name)
        self.interrupt = False

    def load(self, part: object) -> None:
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        assert isinstance(part, int)
        super().load(part)


def test_an_interrupt_raised_by_one_source_still_restores_all_of_them() -> None:
    source = _InterruptedOnce()

    def block() -> None:
        with pytest.raises(KeyboardInterrupt):
            with fork_rng():
                draw_everything()
                source.value = 9
                source.interrupt = True

    with registered(source):
        assert_invisible(block, seed=7)
        assert source.value == 0  # loaded again after the interrupt
        assert_settled()


def test_a_failure_and_an_interrupt_are_both_reported() -> None:
    class Broken(_InterruptedOnce):
        def load(self, part: object) -> None:
            raise RuntimeError("cannot")

    interrupted = _InterruptedOnce()

    def block() -> pytest.ExceptionInfo[KeyboardInterrupt]:
        with pytest.raises(KeyboardInterrupt) as caught:
            with fork_rng():
                draw_everything()
                interrupted.interrupt = True
        return caught

    with registered(Broken("broken"), interrupted):
        caught = assert_invisible(block, seed=7)
    assert isinstance(caught.value.__context__, rng_fork.RngRestoreError)
    assert sorted(caught.value.__context__.failures) == ["broken"]


@pytest.fixture(params=HANDLER_PATHS)
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each way rng_fork's handler goes in and out, in turn."""
    with handler_path(request.param):
        yield request.param


@pytest.mark.usefixtures("path")
def test_the_handler_is_installed_only_while_a_block_is_open() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with fork_rng():
        assert _interrupts.installed()
        with fork_rng():
            assert _interrupts.installed()
        assert _interrupts.installed()
    assert_settled()


@pytest.mark.usefixtures("path")
def test_a_handler_the_program_installs_meanwhile_is_kept_and_called() -> None:
    calls: list[int] = []

    def own(signum: int, frame: object) -> None:
        calls.append(signum)

    try:
        with fork_rng():
            signal.signal(signal.SIGINT, own)
        assert signal.getsignal(signal.SIGINT) is own
        with fork_rng():
            assert _interrupts.installed()
            signal.raise_signal(signal.SIGINT)  # arrives in the block: passed on at once
            assert calls == [signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is own
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.mark.usefixtures("path")
def test_an_ignored_sigint_is_left_alone() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with fork_rng():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert_settled()


@pytest.mark.usefixtures("path")
def test_blocks_in_other_threads_install_nothing() -> None:
    seen: list[object] = []

    def work() -> None:
        with fork_rng():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]
    assert_settled()


@pytest.mark.usefixtures("path")
def test_a_second_sigint_while_one_is_held_goes_through() -> None:
    source = _InterruptedOnce()
    original = source.load
    first = [True]

    def slow_restore(part: object) -> None:
        if first.pop() if first else False:
            signal.raise_signal(signal.SIGINT)  # held: it arrived in rng_fork's restore
            assert _interrupts.held()
            try:
                signal.raise_signal(signal.SIGINT)  # the user insists: raised at once
            finally:
                original(part)
        original(part)

    source.load = slow_restore  # type: ignore[method-assign]
    with registered(source):
        with pytest.raises(KeyboardInterrupt):
            with fork_rng():
                source.value = 3
        assert source.value == 0
        assert_settled()


# --- real signals ------------------------------------------------------------------------


class SigintSender:
    """Another thread that sends the main thread one real SIGINT per :meth:`arm`, after a delay."""

    def __init__(self) -> None:
        self._main = threading.main_thread().ident
        self._armed = threading.Semaphore(0)
        self._sent = threading.Semaphore(0)
        self._delay = 0.0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._armed.acquire()
            if self._stop:
                return
            deadline = time.perf_counter() + self._delay
            while time.perf_counter() < deadline:
                pass
            assert self._main is not None
            signal.pthread_kill(self._main, signal.SIGINT)
            self._sent.release()

    def arm(self, delay: float) -> None:
        self._delay = delay
        self._armed.release()

    def wait_sent(self) -> None:
        self._sent.acquire()

    def close(self) -> None:
        self._stop = True
        self._armed.release()
        self._thread.join()


REAL_TRIALS = 10_000


@pytest.mark.slow
def test_real_sigints_at_random_moments_never_leave_a_generator_changed() -> None:
    stream = RngStream(seed=9)

    def with_stream() -> None:
        with stream:
            draw_everything()
            with fork_rng():
                with stream:
                    torch.rand(1)

    blocks = [fork_block, seeded_fork_block, nested_forks, isolated_call, isolated_generator, with_stream]
    chooser = random.Random(0)
    seed_globals(7)
    before = states()
    wrong = inside = 0
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # the sender gets the GIL within microseconds, not the default 5 ms
    sender = SigintSender()
    try:
        for trial in range(REAL_TRIALS):
            block = blocks[trial % len(blocks)]
            try:
                sender.arm(chooser.uniform(0, 0.0001))
                while True:
                    block()
            except KeyboardInterrupt as interrupt:
                inside += any(frame.f_code.co_filename.startswith(PACKAGE) for frame, _ in walk_tb(interrupt))
            sender.wait_sent()
            if states() != before:
                wrong += 1
                seed_globals(7)
            assert_settled()
    finally:
        sender.close()
        sys.setswitchinterval(switch)
    assert wrong == 0, f"{wrong} of {REAL_TRIALS} interrupts left a generator changed"
    assert inside > REAL_TRIALS // 10  # many were raised from rng_fork's code: they arrived while it ran


def walk_tb(exc: BaseException) -> Iterator[tuple[FrameType, int]]:
    import traceback

    return traceback.walk_tb(exc.__traceback__)


@pytest.mark.usefixtures("path")
def test_a_block_left_in_another_thread_leaves_a_handler_that_passes_everything_on() -> None:
    def body() -> Iterator[None]:
        with fork_rng():
            yield

    steps = body()
    next(steps)  # entered in the main thread
    finisher = threading.Thread(target=lambda: next(steps, None))  # left in another, which cannot set handlers
    finisher.start()
    finisher.join()
    assert not _swap._layers and _interrupts.installed()
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    with fork_rng():
        pass
    assert_settled()  # the main thread's next block put the previous handler back


@pytest.mark.usefixtures("path")
def test_a_handler_left_installed_and_then_replaced_by_the_program_is_accounted_for() -> None:
    def body() -> Iterator[None]:
        with fork_rng():
            yield

    counts = sys.getrefcount(signal.default_int_handler), sys.getrefcount(_interrupts._handler)
    for _ in range(3):
        steps = body()
        next(steps)
        finisher = threading.Thread(target=next, args=(steps, None))
        finisher.start()
        finisher.join()
        assert _interrupts.installed()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the program's own, put back by itself
        with fork_rng():
            assert _interrupts.installed()
        assert_settled()
    assert (sys.getrefcount(signal.default_int_handler), sys.getrefcount(_interrupts._handler)) == counts
