"""Shared fixtures: a known starting state for every global generator, stand-in backends, hidden sources."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import settings

from rng_fork import RngFamily, RngSource, register_source, registered_sources
from rng_fork.sources import LazyDeviceFamily, ModuleDeviceFamily

from .fakebackend import FakeLazyBackend, FakeModuleBackend
from .helpers import Unseen, registered, seed_globals

HAS_CUDA = torch.cuda.is_available()

# Every run tests the same examples (a failure in CI is one that reproduces); `pytest
# --hypothesis-profile=explore` draws new ones each run and keeps failures in .hypothesis/.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("deterministic")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    seed_globals(1234)
    yield


@pytest.fixture
def fake() -> Iterator[FakeLazyBackend]:
    """A torch.cuda-like backend of two devices on CPU generators, registered as ``fake``."""
    backend = FakeLazyBackend(count=2)
    with registered(LazyDeviceFamily("fake", backend, device_type="cpu")):
        yield backend


@pytest.fixture
def acc() -> Iterator[FakeModuleBackend]:
    """A backend of two devices reached only through RNG functions, registered as ``acc``."""
    backend = FakeModuleBackend(count=2)
    with registered(ModuleDeviceFamily("acc", backend, device_type="cpu")):
        yield backend


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """torch.compile's caches emptied before and after the test, so each compiles anew."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def thread_warning_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The warning about blocks open in several threads, not yet given (it is given once a process)."""
    from rng_fork import _swap

    monkeypatch.setattr(_swap, "_warned_threads", False)


@pytest.fixture
def hide_source() -> Iterator[Callable[[str], None]]:
    """Make forks and snapshots blind to one registered source, for one test."""
    hidden: list[RngSource | RngFamily] = []

    def hide(name: str) -> None:
        hidden.append(next(s for s in registered_sources() if s.name == name))
        register_source(Unseen(name), replace=True)  # keeps the registry's order

    yield hide
    for source in hidden:
        register_source(source, replace=True)
