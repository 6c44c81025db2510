"""Shared fixtures: a known starting state for every global generator."""

from __future__ import annotations

import io
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def seed_globals(seed: int) -> None:
    """Seed every global generator the way a training script would."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def through_torch_save(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` after a round trip through torch.save and torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded


def draw_all() -> tuple[float, float, list[float]]:
    """One draw from each global CPU generator, gaussian caches included."""
    return (random.gauss(0, 1), float(np.random.randn()), torch.randn(3).tolist())


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    seed_globals(1234)
    yield


@pytest.fixture
def reference() -> Callable[[Callable[[], object]], object]:
    """Run a function from the fixture's starting state and return what it gives."""

    def run(fn: Callable[[], object]) -> object:
        seed_globals(1234)
        return fn()

    return run


@contextmanager
def fork_open_in_another_thread() -> Iterator[None]:
    """A ``fork_rng()`` block held open by a second thread while the body runs."""
    import rng_fork

    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with rng_fork.fork_rng():
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
