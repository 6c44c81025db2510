"""The SIGINT handler slot: found and verified here, off wherever it cannot be, and written with
CPython's reference counts kept whatever the program does with its handlers meanwhile."""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType, SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rng_fork
from rng_fork import _interrupts, _sigint_slot, _swap, fork_rng

from .helpers import HANDLER_PATHS, handler_path
from .test_interrupts import run_injected

PORTABLE = os.environ.get("RNG_FORK_PORTABLE", "").strip().lower() in {"1", "true", "yes", "on"}
CPYTHON_ON_LINUX = sys.implementation.name == "cpython" and sys.platform.startswith("linux")
needs_slot = pytest.mark.skipif(
    PORTABLE or not CPYTHON_ON_LINUX, reason="the slot is looked for on CPython on Linux only"
)


def own_handler(signum: int, frame: object) -> None:
    """A program's own handler: it records nothing, it only has to be a Python callable."""


def other_handler(signum: int, frame: object) -> None:
    """Another one."""


HANDLERS: tuple[Any, ...] = (signal.default_int_handler, own_handler, other_handler, signal.SIG_IGN)
"""What the program installs meanwhile; ``None`` in a program stands for the handler it sees then
(inside a block: rng_fork's), installed again, as ``signal.signal(SIGINT, old)`` does."""


def counts() -> list[int]:
    return [sys.getrefcount(handler) for handler in (*HANDLERS, _interrupts._handler)]


@pytest.fixture
def default_handler() -> Iterator[None]:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)


@needs_slot
def test_the_slot_is_found_and_verified_here() -> None:
    with fork_rng():  # the first block looks for it
        pass
    info = _interrupts.slot_info()
    assert info.startswith("active"), info
    assert _interrupts._slot is not None
    with fork_rng():
        assert _interrupts.installed()
        assert _interrupts._slot[0] == id(_interrupts._handler)
    assert _interrupts._slot[0] == id(signal.default_int_handler)


@pytest.mark.skipif(not PORTABLE, reason="RNG_FORK_PORTABLE is not set")
def test_portable_runs_never_look_for_the_slot() -> None:
    assert _interrupts.slot_info() == "disabled: RNG_FORK_PORTABLE is set"
    assert _sigint_slot.find(signal.default_int_handler) == (None, "disabled: RNG_FORK_PORTABLE is set")


def test_info_says_how_the_handler_goes_in() -> None:
    with fork_rng():
        pass
    shield = rng_fork.info()[-1]
    assert shield["name"] == "sigint"
    assert shield["fast_path"] == _interrupts.slot_info()
    sources = [source.name for source in rng_fork.registered_sources()]
    assert [entry["name"] for entry in rng_fork.info()[:-1]] == sources


# A step: +1 enters a fork, -1 leaves the innermost, ("set", i) installs HANDLERS[i] (None: what it sees).
steps = st.lists(
    st.one_of(st.just(1), st.just(-1), st.tuples(st.just("set"), st.sampled_from([None, 0, 1, 2, 3]))), max_size=30
)


@pytest.mark.parametrize("path", HANDLER_PATHS)
@settings(max_examples=150, deadline=None)
@given(program=steps)
def test_the_handler_in_and_out_keeps_what_the_program_sees_and_every_reference_count(
    path: str, program: list[Any]
) -> None:
    with handler_path(path):
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        blocks: list[fork_rng] = []
        seen: Any = signal.default_int_handler  # the model: what getsignal says
        entered_over: Any = None  # what it said as the outermost block was entered
        before = counts()  # with seen's reference: it ends the same way
        try:
            for step in program:
                if step == 1:
                    if not blocks:
                        entered_over = seen
                        if callable(seen):
                            seen = _interrupts._handler
                    blocks.append(fork_rng())
                    blocks[-1].__enter__()
                elif step == -1 and blocks:
                    blocks.pop().__exit__(None, None, None)
                    if not blocks and seen is _interrupts._handler:
                        seen = entered_over
                elif isinstance(step, tuple):
                    seen = seen if step[1] is None else HANDLERS[step[1]]
                    signal.signal(signal.SIGINT, seen)
                assert signal.getsignal(signal.SIGINT) is seen
        finally:
            while blocks:
                blocks.pop().__exit__(None, None, None)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        seen, entered_over = signal.default_int_handler, None
        assert _interrupts._open == 0
        assert counts() == before


def _decoy_signal(decoy: ctypes.c_size_t) -> SimpleNamespace:
    """``_signal`` as the probe calls it, with a word that follows every handler set."""
    real = _sigint_slot._signal

    def set_handler(signum: int, handler: Any) -> Any:
        decoy.value = id(handler)
        return real.signal(signum, handler)

    return SimpleNamespace(signal=set_handler, getsignal=real.getsignal)


@needs_slot
@pytest.mark.usefixtures("default_handler")
@pytest.mark.parametrize("where", ["nowhere", "a decoy only", "a decoy and the slot"])
def test_a_word_that_is_not_the_slot_alone_is_never_used(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    decoy = ctypes.c_size_t(0)
    real_words = _sigint_slot._words_holding
    if where == "nowhere":
        monkeypatch.setattr(_sigint_slot, "_interpreter_memory", lambda: iter(()))
    else:
        monkeypatch.setattr(_sigint_slot, "_signal", _decoy_signal(decoy))
        also = where == "a decoy and the slot"
        monkeypatch.setattr(
            _sigint_slot,
            "_words_holding",
            lambda value: [ctypes.addressof(decoy), *(real_words(value) if also else [])],
        )
    before = counts()
    slot, info = _sigint_slot.find(signal.default_int_handler)
    assert slot is None
    assert (
        info
        == {
            "nowhere": "unavailable: 0 words follow signal.signal, not one",
            "a decoy only": "unavailable: writing the word does not change signal.getsignal()",
            "a decoy and the slot": "unavailable: 2 words follow signal.signal, not one",
        }[where]
    )
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert counts() == before


@needs_slot
@pytest.mark.parametrize(
    ("attribute", "value", "says"),
    [
        ("implementation", SimpleNamespace(name="pypy"), "not CPython (pypy)"),
        ("platform", "darwin", "the memory map is read from /proc/self/maps: Linux only, not darwin"),
    ],
)
def test_elsewhere_the_slot_is_not_looked_for(
    monkeypatch: pytest.MonkeyPatch, attribute: str, value: object, says: str
) -> None:
    monkeypatch.setattr(_sigint_slot.sys, attribute, value)
    slot, info = _sigint_slot.find(signal.default_int_handler)
    assert slot is None and info.startswith(f"unavailable: {says}")


@needs_slot
def test_a_free_threaded_build_is_not_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sigint_slot.sysconfig, "get_config_var", lambda name: 1)
    slot, info = _sigint_slot.find(signal.default_int_handler)
    assert slot is None and info == "unavailable: a free-threaded build: the table is written under no GIL"


@pytest.fixture
def not_looked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next block looks for the slot again (as the first block of a process does)."""
    monkeypatch.setattr(_interrupts, "_slot", None)
    monkeypatch.setattr(_interrupts, "_slot_info", None)


def sigint_while_probing(monkeypatch: pytest.MonkeyPatch, times: int = 1) -> None:
    """A real SIGINT (``times`` of them) while the probe handlers stand in for the program's."""
    real_view = _sigint_slot._view
    armed = [True]

    def interrupted(address: int) -> memoryview:
        if armed and armed.pop():
            for _ in range(times):
                signal.raise_signal(signal.SIGINT)
        return real_view(address)

    monkeypatch.setattr(_sigint_slot, "_view", interrupted)


@needs_slot
@pytest.mark.usefixtures("default_handler", "not_looked_for")
def test_a_sigint_during_the_probe_reaches_the_program_once_its_handler_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[object] = []

    def stop_on_the_first_and_ignore_the_rest(signum: int, frame: object) -> None:
        seen.append(signal.getsignal(signal.SIGINT))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # what the program sets stays set

    signal.signal(signal.SIGINT, stop_on_the_first_and_ignore_the_rest)
    sigint_while_probing(monkeypatch, times=2)
    with fork_rng():
        pass
    assert seen == [stop_on_the_first_and_ignore_the_rest]  # once, with its own handler in place
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert _interrupts.slot_info().startswith("active")


@needs_slot
@pytest.mark.usefixtures("default_handler", "not_looked_for")
def test_a_sigint_while_the_slot_is_looked_for_is_raised_before_the_block_and_it_is_looked_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = [sys.getrefcount(probe) for probe in (_sigint_slot._first_probe, _sigint_slot._second_probe)]
    sigint_while_probing(monkeypatch, times=2)
    with pytest.raises(KeyboardInterrupt):
        with fork_rng():
            pytest.fail("the block must not run")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert _interrupts._open == 0 and _interrupts._slot_info is None
    assert [sys.getrefcount(probe) for probe in (_sigint_slot._first_probe, _sigint_slot._second_probe)] == before
    monkeypatch.undo()
    monkeypatch.setattr(_interrupts, "_slot", None)
    monkeypatch.setattr(_interrupts, "_slot_info", None)
    with fork_rng():  # looked for again, and found
        assert _interrupts.installed()
    assert _interrupts.slot_info().startswith("active")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@needs_slot
@pytest.mark.usefixtures("default_handler", "not_looked_for")
def test_a_handler_the_program_sets_while_memory_is_scanned_is_kept_and_the_slot_looked_for_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def ignore_the_rest(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    real_words = _sigint_slot._words_holding

    def interrupted(value: int) -> list[int]:
        signal.raise_signal(signal.SIGINT)  # the program's handler runs at once: nothing stands in for it yet
        return real_words(value)

    signal.signal(signal.SIGINT, ignore_the_rest)
    monkeypatch.setattr(_sigint_slot, "_words_holding", interrupted)
    with fork_rng():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert _interrupts._slot_info is None  # looked for again at a later block


def first_block_whose_handler_the_program_replaces() -> None:
    with fork_rng():
        signal.signal(signal.SIGINT, own_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with fork_rng():
        pass


@pytest.fixture
def memory_scanned_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe's scan of the interpreter's memory done once and replayed: a SIGINT in it is held
    like one anywhere else in the probe (tested above), and its thousands of places make every
    probe under a tracer slow."""
    real_words = _sigint_slot._words_holding
    scanned: dict[int, list[int]] = {}

    def replayed(value: int) -> list[int]:
        if value not in scanned:
            scanned[value] = real_words(value)
        return list(scanned[value])

    monkeypatch.setattr(_sigint_slot, "_words_holding", replayed)
    monkeypatch.setattr(_interrupts, "_slot", None)
    monkeypatch.setattr(_interrupts, "_slot_info", None)
    with fork_rng():  # scanned here, untraced
        pass


@needs_slot
@pytest.mark.usefixtures("default_handler", "not_looked_for", "memory_scanned_once")
def test_a_sigint_at_any_place_of_the_first_block_never_leaves_a_reference_too_few() -> None:
    """A count one too low frees a handler the table still points to; one too many is a leak of
    one small object (an interrupt between two reference changes), never more than one per interrupt."""
    base_default, base_ours = sys.getrefcount(signal.default_int_handler), sys.getrefcount(_interrupts._handler)
    finds = runs = 0
    for target in itertools.count():
        _interrupts._slot, _interrupts._slot_info = None, None
        delivered, _, _ = run_injected(first_block_whose_handler_the_program_replaces, target)
        runs += 1
        finds += _interrupts._slot is not None
        signal.signal(signal.SIGINT, signal.default_int_handler)
        assert not _swap._layers and _interrupts._open == 0 and not _interrupts.held()
        assert sys.getrefcount(_interrupts._handler) >= base_ours + finds, f"place {target}"
        assert sys.getrefcount(signal.default_int_handler) >= base_default, f"place {target}"
        if not delivered:
            break
    assert target > 50 and finds > 10, (target, finds)
    assert sys.getrefcount(_interrupts._handler) <= base_ours + finds + runs
    assert sys.getrefcount(signal.default_int_handler) <= base_default + runs


def nested_block(frame: FrameType) -> None:
    """What another signal's handler that forks (periodic logging on SIGALRM, say) does."""
    with fork_rng():
        pass


def nested_block_replacing_the_handler(frame: FrameType) -> None:
    with fork_rng():
        signal.signal(signal.SIGINT, own_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.mark.parametrize("path", HANDLER_PATHS)
@pytest.mark.parametrize("action", [nested_block, nested_block_replacing_the_handler])
@pytest.mark.usefixtures("default_handler")
def test_another_signals_handler_that_forks_at_any_place_leaves_the_handler_and_every_count(
    path: str, action: Callable[[FrameType], None]
) -> None:
    """At every place where CPython runs signal handlers (a function starts, a call returns): not
    between two lines, which only a tracer's own code could do."""
    with handler_path(path):
        before = counts()
        for target in itertools.count():
            delivered, interrupted, _ = run_injected(lambda: nested_block(None), target, action, lines=False)  # type: ignore[arg-type]
            assert not interrupted
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, f"place {target}"
            assert not _swap._layers and _interrupts._open == 0
            assert counts() == before, f"place {target}"
            if not delivered:
                break
        assert target > 10


@needs_slot
@pytest.mark.usefixtures("default_handler", "not_looked_for")
@pytest.mark.parametrize("where", ["_words_holding", "_put_back"])
def test_another_signals_exception_during_the_probe_goes_on_to_the_program_and_leaves_no_probe_installed(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A SIGALRM deadline that raises TimeoutError while memory is scanned, or as the probe's
    clean-up starts (before the program's handler is put back)."""
    real = getattr(_sigint_slot, where)
    armed = [True]

    def deadline(*args: Any) -> Any:
        if armed and armed.pop():
            raise TimeoutError("the program's deadline")
        return real(*args)

    monkeypatch.setattr(_sigint_slot, where, deadline)
    with pytest.raises(TimeoutError, match="the program's deadline"):
        with fork_rng():
            pytest.fail("the block must not run")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert _interrupts._open == 0 and _interrupts._slot_info is None
    with fork_rng():  # looked for again
        pass
    assert _interrupts.slot_info().startswith("active")


class ReplacesItself:
    """A program's handler that, on the first Ctrl-C, installs another (so that a second one does
    something else): CPython drops the table's reference to it as it does."""

    def __call__(self, signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, own_handler)


@pytest.mark.parametrize("path", HANDLER_PATHS)
@pytest.mark.usefixtures("default_handler")
def test_a_handler_that_replaces_itself_at_any_line_of_a_block_is_kept_with_every_count(path: str) -> None:
    """Line events too: what a line tracer (a debugger, coverage) lets happen between two lines."""
    with handler_path(path):
        replacing = ReplacesItself()
        before = sys.getrefcount(replacing), sys.getrefcount(own_handler), sys.getrefcount(_interrupts._handler)
        for target in itertools.count():
            signal.signal(signal.SIGINT, replacing)
            delivered, interrupted, _ = run_injected(lambda: nested_block(None), target)  # type: ignore[arg-type]
            assert not interrupted
            assert signal.getsignal(signal.SIGINT) is (own_handler if delivered else replacing), f"place {target}"
            assert not _swap._layers and _interrupts._open == 0 and not _interrupts.held()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            after = sys.getrefcount(replacing), sys.getrefcount(own_handler), sys.getrefcount(_interrupts._handler)
            assert after >= before, f"place {target}: a reference too few"
            if not delivered:
                break
        assert target > 20
