"""A stand-in for ``torch.cuda``'s lazy machinery, on CPU generators.

It queues calls and seeds exactly as ``torch.cuda`` does while uninitialized,
creates non-deterministically seeded generators at initialization, then runs
the queued calls and the queued seeds, in torch's order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch._utils import _LazySeedTracker

from . import random as fake_random


class FakeLazyBackend:
    __name__ = "tests.fakebackend"

    def __init__(self, count: int = 2) -> None:
        self.count = count
        self._initialized = False
        self._queued_calls: list[tuple[Callable[[], None], Any]] = []
        self._lazy_seed_tracker = _LazySeedTracker()
        self.default_generators: tuple[torch.Generator, ...] = ()
        self.creation_states: list[torch.Tensor] = []
        self.current = 0

    def set_device(self, device: int) -> None:
        self.current = device

    def current_device(self) -> int:
        self.init()  # as torch.cuda.current_device does
        return self.current

    def is_initialized(self) -> bool:
        return self._initialized

    def device_count(self) -> int:
        return self.count

    def _lazy_call(self, callable: Callable[[], None], **kwargs: bool) -> None:
        if self._initialized:
            callable()
        elif kwargs.get("seed_all"):
            self._lazy_seed_tracker.queue_seed_all(callable, [])
        elif kwargs.get("seed"):
            self._lazy_seed_tracker.queue_seed(callable, [])
        else:
            self._queued_calls.append((callable, []))

    def init(self) -> None:
        if self._initialized:
            return
        self.default_generators = tuple(torch.Generator() for _ in range(self.count))
        for generator in self.default_generators:
            generator.seed()
        self.creation_states = [g.get_state() for g in self.default_generators]
        self._queued_calls.extend(call for call in self._lazy_seed_tracker.get_calls() if call)
        for call, _ in self._queued_calls:
            call()
        self._initialized = True

    def manual_seed_all(self, seed: int) -> None:
        self._lazy_call(fake_random.seed_all_callback(self, seed), seed_all=True)

    def manual_seed(self, seed: int) -> None:
        self._lazy_call(fake_random.seed_callback(self, seed), seed=True)

    def set_rng_state(self, state: torch.Tensor, device: int) -> None:
        self._lazy_call(fake_random.set_state_callback(self, state.clone(), device))

    def rand(self, device: int, n: int = 3) -> list[float]:
        self.init()
        return torch.rand(n, generator=self.default_generators[device]).tolist()


class FakeModuleBackend:
    """A stand-in for a backend reached only through RNG functions (MPS, many PrivateUse1 backends).

    With ``lazy=False`` it has no ``is_initialized`` at all, as ``torch.mps``.
    """

    def __init__(self, count: int = 2, *, lazy: bool = True) -> None:
        self.count = count
        self._generators: list[torch.Generator] = []
        self._initialized = not lazy
        if lazy:
            self.is_initialized = lambda: self._initialized
        if not lazy:
            self._create()

    def _create(self) -> None:
        self._generators = [torch.Generator() for _ in range(self.count)]
        for generator in self._generators:
            generator.seed()

    def init(self) -> None:
        if not self._initialized:
            self._create()
            self._initialized = True

    def device_count(self) -> int:
        return self.count

    def get_rng_state(self, device: int = 0) -> torch.Tensor:
        self.init()
        return self._generators[device].get_state()

    def set_rng_state(self, state: torch.Tensor, device: int = 0) -> None:
        self.init()
        self._generators[device].set_state(state)

    def manual_seed_all(self, seed: int) -> None:
        self.init()
        for generator in self._generators:
            generator.manual_seed(seed)

    def rand(self, device: int, n: int = 3) -> list[float]:
        self.init()
        return torch.rand(n, generator=self._generators[device]).tolist()
