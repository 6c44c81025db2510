"""Helpers the test modules share: seeding, the invisibility check, test sources, groups."""

from __future__ import annotations

import io
import random
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
import torch.distributed as dist

import rng_fork
from rng_fork import PlainCodec, RngFamily, RngSource

T = TypeVar("T")


def seed_globals(seed: int) -> None:
    """Seed every global generator the way a training script would."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def draw_all() -> tuple[float, float, list[float]]:
    """One draw from each global CPU generator, gaussian caches included."""
    return (random.gauss(0, 1), float(np.random.randn()), torch.randn(3).tolist())


def through_torch_save(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` after a round trip through torch.save and torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded


# --- the invisibility check ---------------------------------------------------------------


def _bits(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


def _draw_from(generator: object) -> bytes:
    """A few draws from ``generator``, by their bits; Gaussian and half-word caches included."""
    if isinstance(generator, torch.Generator):
        return torch.randn(3, generator=generator, device=generator.device).cpu().numpy().tobytes()
    if isinstance(generator, np.random.Generator):
        return generator.standard_normal(3).tobytes() + generator.random(3, dtype=np.float32).tobytes()
    if isinstance(generator, np.random.RandomState):
        return generator.randn(3).tobytes() + generator.random_sample(2).tobytes()
    if isinstance(generator, np.random.BitGenerator):
        return generator.random_raw(3).tobytes()
    if isinstance(generator, random.Random):
        return _bits(generator.gauss(0, 1), generator.gauss(0, 1), generator.random())
    raise TypeError(f"no draws defined for a {type(generator).__name__}")


def later_draws(generators: Sequence[object] = ()) -> dict[str, bytes]:
    """Draws from every global generator and from each of ``generators``, by source, as bits."""
    draws = {
        "python": _bits(random.gauss(0, 1), random.gauss(0, 1), random.random()),
        "numpy": np.random.randn(3).tobytes() + np.random.random_sample(2).tobytes(),
        "torch": torch.randn(3).numpy().tobytes() + torch.rand(2).numpy().tobytes(),
    }
    draws.update({f"generator:{i}": _draw_from(g) for i, g in enumerate(generators)})
    return draws


def assert_invisible(
    block: Callable[..., T],
    *,
    before: Callable[..., object] | None = None,
    generators: Callable[[], Sequence[object]] | None = None,
    seed: int = 1234,
) -> T:
    """Assert that running ``block`` changes no draw after it; return what ``block`` returned.

    Runs a reference program twice, once with and once without ``block``: seed every
    global generator with ``seed``, make fresh ``generators()``, run ``before``, then
    ``block`` (both called with the generators as arguments), then draw from every global
    generator and every generator made. Each of those draws must be bit-identical.

    Example::

        def drawn_in_a_fork(g: torch.Generator) -> None:
            with fork_rng(generators=[g]):
                torch.rand(3)
                torch.rand(3, generator=g)

        assert_invisible(drawn_in_a_fork, generators=lambda: [torch.Generator().manual_seed(0)])
    """

    def program(with_block: bool) -> tuple[T | None, dict[str, bytes]]:
        seed_globals(seed)
        made = tuple(generators()) if generators is not None else ()
        if before is not None:
            before(*made)
        result = block(*made) if with_block else None
        return result, later_draws(made)

    _, expected = program(with_block=False)
    result, got = program(with_block=True)
    changed = [name for name in expected if got[name] != expected[name]]
    assert not changed, f"the block changed the later draws of {', '.join(changed)}"
    return result  # type: ignore[return-value]


# --- refusals ------------------------------------------------------------------------------


@contextmanager
def refused_unchanged(
    error: type[BaseException], match: str | None = None, *, generators: Sequence[object] = ()
) -> Iterator[pytest.ExceptionInfo[BaseException]]:
    """The ``with`` body raises ``error`` (its message matching ``match``) and leaves every generator as it was.

    Example::

        with refused_unchanged(ValueError, "'numpy'"):
            set_rng_state(corrupt_state_dict)
    """
    before = rng_fork.get_rng_state(generators=generators)
    with pytest.raises(error, match=match) as info:
        yield info
    assert rng_fork.get_rng_state(generators=generators) == before, "a refused call changed a generator"


def assert_error(error: BaseException | tuple[str, str], kind: type[BaseException] | str, *says: str) -> None:
    """``error`` (or its ``(type name, message)``) is a ``kind`` whose message says each of ``says``:
    the source or value it names, the rule broken. Its meaning, not its wording.

    Example::

        assert_error(info.value, ValueError, "'numpy'", "strict=False")
    """
    name, message = (type(error).__name__, str(error)) if isinstance(error, BaseException) else error
    expected = kind if isinstance(kind, str) else kind.__name__
    assert name == expected, f"a {name}, not a {expected}: {message}"
    missing = [part for part in says if part not in message]
    assert not missing, f"{message!r} does not say {missing}"


# --- sources for tests ----------------------------------------------------------------------


@contextmanager
def registered(*sources: RngSource | RngFamily) -> Iterator[None]:
    """``sources`` registered for the ``with`` block, unregistered after it."""
    names: list[str] = []
    try:
        for source in sources:
            rng_fork.register_source(source)
            names.append(source.name)
        yield
    finally:
        for name in reversed(names):
            rng_fork.unregister_source(name)


class ValueSource(RngSource):
    """A registered source over one plain value: saving reads it, loading and seeding set it."""

    def __init__(self, name: str, value: Any = 0) -> None:
        self.name = name
        self.codec = PlainCodec(f"test-{name}")
        self.value = value

    def save(self) -> Any:
        return self.value

    def load(self, part: Any) -> None:
        self.value = part

    def seed(self, seed: int) -> None:
        self.value = seed


class Unseen(RngFamily):
    """Stands in for a registered source: a family that never has a generator to save."""

    codec = PlainCodec("unseen")

    def __init__(self, name: str) -> None:
        self.name = name

    def expand(self, devices: Any) -> tuple[RngSource, ...]:
        return ()

    def resolve(self, name: str) -> None:
        return None

    def seed(self, seed: int) -> None:
        pass


# --- the SIGINT handler's two ways in -------------------------------------------------------

HANDLER_PATHS = ("slot", "signal.signal")
"""How rng_fork's SIGINT handler goes in and out: the verified slot, or the official call."""


@contextmanager
def handler_path(path: str) -> Iterator[None]:
    """rng_fork's SIGINT handler installed through ``path`` (one of :data:`HANDLER_PATHS`) for the
    block; the slot's path skips where it is not found here (or ``RNG_FORK_PORTABLE`` is set)."""
    from rng_fork import _interrupts

    assert _interrupts._open == 0, "switched only while no block is open"
    with rng_fork.fork_rng():  # the first block looks for the slot
        pass
    info = _interrupts.slot_info()
    if path == "slot":
        if _interrupts._slot is None:
            pytest.skip(f"the SIGINT slot: {info}")
        yield
        return
    slot = _interrupts._slot
    _interrupts._slot, _interrupts._slot_info = None, "off for this test"
    try:
        yield
    finally:
        assert _interrupts._open == 0
        _interrupts._slot, _interrupts._slot_info = slot, info


# --- threads and process groups -----------------------------------------------------------


@contextmanager
def fork_open_in_another_thread(block: AbstractContextManager[object] | None = None) -> Iterator[None]:
    """``block`` (a fresh ``fork_rng()`` unless given) held open by a second thread while the body runs."""
    inside, release = threading.Event(), threading.Event()
    held = rng_fork.fork_rng() if block is None else block

    def hold() -> None:
        with held:
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    inside.wait(10)
    try:
        yield
    finally:
        release.set()
        thread.join()


@contextmanager
def one_rank_group() -> Iterator[None]:
    """A one-process gloo group on an in-memory store: no port, no other process."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()

