"""The fake backend's RNG callbacks, in a ``.random`` module as torch.cuda's are."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def seed_all_callback(backend: Any, seed: int) -> Callable[[], None]:
    def cb() -> None:
        for generator in backend.default_generators:
            generator.manual_seed(seed)

    return cb


def seed_callback(backend: Any, seed: int) -> Callable[[], None]:
    def cb() -> None:
        backend.default_generators[0].manual_seed(seed)

    return cb


def set_state_callback(backend: Any, state: torch.Tensor, device: int) -> Callable[[], None]:
    def cb() -> None:
        backend.default_generators[device].set_state(state)

    return cb
