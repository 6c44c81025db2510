"""rng_fork.trace() around torch.compile'd functions and DataLoader workers: the same numbers as untraced."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rng_fork import trace

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def noisy(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.dropout(x, 0.5, True) + torch.rand(4)


def _calls(compiled: Callable[[torch.Tensor], torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    torch.manual_seed(0)
    results, lines = [], []
    for _ in range(2):  # the first call compiles, the second runs the cached graph
        results.append(compiled(torch.ones(4))); lines.append(sys._getframe().f_lineno)  # noqa: E702
    results.append(torch.rand(4))
    return results, lines


@pytest.mark.parametrize("backend", ["eager", "aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_code_stays_compiled_and_draws_the_same(backend: str) -> None:
    untraced, _ = _calls(torch.compile(noisy, backend=backend))
    torch._dynamo.reset()
    frames_before = torch._dynamo.utils.counters["frames"]["ok"]
    with trace() as tr:
        traced, lines = _calls(torch.compile(noisy, backend=backend))
    assert all(torch.equal(a, b) for a, b in zip(untraced, traced))
    # Dynamo compiled the function while the trace was on, rather than running it eagerly.
    assert torch._dynamo.utils.counters["frames"]["ok"] > frames_before
    assert next((e.source, e.kind, e.op) for e in tr.events) == ("torch", "reseed", "manual_seed")
    draws = tr.events[1:]
    assert {(e.source, e.kind) for e in draws} == {("torch", "draw")}
    # Draws inside compiled code are named at the compiled call's line; the eager rand after them at its own.
    inside = [e for e in draws if e.lineno in lines]
    assert {e.lineno for e in inside} == set(lines)
    assert len(inside) == len(draws) - 1
    if backend == "inductor":
        # Inductor draws its seeds and generates the numbers in its kernels: not what eager torch draws.
        eager, _ = _calls(noisy)
        assert not torch.equal(eager[0], traced[0])


class Jittered(Dataset[torch.Tensor]):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.full((2,), float(index)) + torch.randn(2)


@pytest.mark.slow
def test_dataloader_workers_draw_the_same_and_the_main_process_draws_are_named() -> None:
    loader = DataLoader(Jittered(), batch_size=2, shuffle=True, num_workers=2)

    def epochs() -> list[torch.Tensor]:
        torch.manual_seed(0)
        batches = []
        for _ in range(2):
            for batch in loader:
                batches.append(batch)
        return [*batches, torch.rand(3)]

    untraced = epochs()
    with trace() as tr:
        traced = epochs()
    assert all(torch.equal(a, b) for a, b in zip(untraced, traced, strict=True))
    # The main process draws each epoch's base seed and shuffle seed; the workers' jitter is theirs.
    draws = [(e.op, e.function) for e in tr.events if e.kind == "draw"]
    assert draws.count(("random_", "epochs")) == 4
    assert {e.source for e in tr.events} == {"torch"}
    assert all(e.function == "epochs" for e in tr.events), tr.report()
