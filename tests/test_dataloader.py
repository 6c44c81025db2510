"""The DataLoader cases that motivate rng_fork."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import rng_fork
from rng_fork import fork_rng


class NoisyDataset(Dataset[torch.Tensor]):
    """Each item draws from the worker's torch and NumPy generators, like an augmentation."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(index), torch.rand(()).item(), float(np.random.rand())])


def seed_numpy_in_worker(worker_id: int) -> None:
    np.random.seed(torch.initial_seed() % 2**32)


def test_iterating_a_loader_inside_a_fork_leaves_torch_unchanged() -> None:
    loader = DataLoader(TensorDataset(torch.arange(10.0)), batch_size=4, shuffle=False)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    list(loader)
    assert not torch.equal(torch.rand(3), expected), "iterating a loader draws from torch's generator"
    torch.manual_seed(1234)
    with fork_rng():
        list(loader)
    assert torch.equal(torch.rand(3), expected)


def _first_train_batch(shared_test_loop: str) -> torch.Tensor:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(42)
    options = {"batch_size": 4, "num_workers": 2, "worker_init_fn": seed_numpy_in_worker, "generator": g}
    train = DataLoader(NoisyDataset(), shuffle=True, **options)  # type: ignore[arg-type]
    test = DataLoader(NoisyDataset(), shuffle=True, **options)  # type: ignore[arg-type]
    if shared_test_loop == "plain":
        list(test)
    elif shared_test_loop == "forked":
        with fork_rng(generators=[g]):
            list(test)
    return next(iter(train))


@pytest.mark.slow
def test_test_loader_sharing_a_generator_does_not_reshuffle_training() -> None:
    reference = _first_train_batch("none")
    assert not torch.equal(_first_train_batch("plain"), reference), "without a fork the test loop reshuffles"
    assert torch.equal(_first_train_batch("forked"), reference)


def test_forking_the_loader_itself_covers_its_generators() -> None:
    g = torch.Generator().manual_seed(5)
    loader = DataLoader(TensorDataset(torch.arange(8.0)), batch_size=2, shuffle=True, generator=g)
    expected = [b[0].tolist() for b in loader]
    g.manual_seed(5)
    with fork_rng(generators=[loader]):
        list(loader)
    assert [b[0].tolist() for b in loader] == expected


def test_loader_with_sampler_generator_only() -> None:
    sampler_gen = torch.Generator().manual_seed(3)
    sampler = torch.utils.data.RandomSampler(range(8), generator=sampler_gen)
    loader = DataLoader(TensorDataset(torch.arange(8.0)), batch_size=2, sampler=sampler)
    before = rng_fork.get_rng_state(generators=[loader])
    assert before.names[-1] == "generator:0"
    with fork_rng(generators=[loader]):
        list(loader)
    assert rng_fork.get_rng_state(generators=[loader]) == before


class ForkingDataset(Dataset[torch.Tensor]):
    """Uses fork_rng inside a worker process, where CUDA must not be initialized."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        before = torch.rand(1)
        with fork_rng(seed=index):
            torch.rand(4)
        after = torch.rand(1)
        return torch.tensor([float(torch.cuda.is_initialized()), before.item(), after.item()])


@pytest.mark.slow
def test_fork_rng_in_forked_workers_does_not_touch_cuda() -> None:
    loader = DataLoader(ForkingDataset(), batch_size=8, num_workers=2, multiprocessing_context="fork")
    torch.manual_seed(0)
    (batch,) = list(loader)
    assert batch[:, 0].sum() == 0, "a worker initialized CUDA"
    assert not torch.cuda.is_initialized()
