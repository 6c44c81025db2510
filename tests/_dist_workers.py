"""Rank processes for tests/test_distributed.py.

Ranks are started with the ``spawn`` method, so everything they run lives at
module level here. Each rank runs one scenario, writes what it observed to
``<out>/<scenario>-rank<N>.pkl`` and the test asserts on those files; an
exception in a rank makes ``torch.multiprocessing.spawn`` raise in the test
(with the rank's traceback) and stop the other ranks.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import pickle
import random
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.multiprocessing.spawn import ProcessException
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import rng_fork
import rng_fork.distributed as rd
from rng_fork import get_rng_state
from rng_fork.sources import LazyDeviceFamily, current_devices

from .fakebackend import FakeLazyBackend
from .helpers import ValueSource, seed_globals

ISOLATIONS: dict[str, Callable[[], AbstractContextManager[object]]] = {
    "none": contextlib.nullcontext,
    "fork_rng": rng_fork.fork_rng,
    "stream": lambda: rng_fork.RngStream(seed=0),
}
"""How rank 0 wraps its evaluation in the DDP scenario; "none" is the control that must change training.

Each factory is called once per training run and what it returns is entered at
every evaluation, so a persistent stream fits too: ``"stream": lambda: RngStream(seed=0)``.
"""


def run_ranks(scenario: str, world_size: int, out: Path) -> list[dict[str, Any]]:
    """Run ``scenario`` on ``world_size`` spawned gloo ranks; return each rank's observations.

    The ranks meet through a file in ``out`` rather than a TCP port: a port picked
    here and bound seconds later by rank 0 (after the spawn imports torch) can be
    taken in between by another test's ranks, which then join the wrong group.
    A rank that dies (a signal, an uncaught C++ exception in gloo's threads) leaves
    no Python traceback, so each rank's stderr goes to ``out`` and a failure quotes it.
    """
    store = out / f"{scenario}.store"
    try:
        mp.spawn(_entry, args=(world_size, str(store), str(out), scenario), nprocs=world_size, join=True)
    except ProcessException as exc:
        logs = {rank: _log_of(out, scenario, rank).strip() for rank in range(world_size)}
        last = "; ".join(f"rank {rank}: {_cause(log)}" for rank, log in logs.items() if log)
        whole = "\n".join(f"--- rank {rank}'s stderr ---\n{log}" for rank, log in logs.items())
        raise RuntimeError(f"{scenario}: {exc} ({last or 'no rank wrote to stderr'})\n{whole}") from exc
    return observations(scenario, world_size, out)


def observations(scenario: str, world_size: int, out: Path) -> list[dict[str, Any]]:
    """What each rank of a finished ``run_ranks(scenario, world_size, out)`` observed."""
    return [pickle.loads((out / f"{scenario}-rank{rank}.pkl").read_bytes()) for rank in range(world_size)]


def _cause(log: str) -> str:
    """What a rank printed before faulthandler's stacks (std::terminate's message), or its last line."""
    before, fatal, _ = log.partition("Fatal Python error:")
    lines = before.strip().splitlines() if fatal and before.strip() else log.splitlines()[-1:]
    return " ".join(line.strip() for line in lines[-2:])


def _log_of(out: Path, scenario: str, rank: int) -> str:
    path = out / f"{scenario}-rank{rank}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _entry(rank: int, world_size: int, store: str, out: str, scenario: str) -> None:
    with open(Path(out) / f"{scenario}-rank{rank}.log", "w") as log:
        os.dup2(log.fileno(), 2)  # C++ writes to fd 2 too (std::terminate's message, gloo's warnings)
    faulthandler.enable()  # a fatal signal prints every thread's Python stack to the log
    torch.set_num_threads(1)  # two ranks on two cores
    # A rank stuck in a collective fails after this long instead of hanging the test run.
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world_size, timeout=timedelta(seconds=60)
    )
    try:
        observed = SCENARIOS[scenario](rank, world_size, Path(out))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    (Path(out) / f"{scenario}-rank{rank}.pkl").write_bytes(pickle.dumps(observed))


def draws(*generators: torch.Generator) -> tuple[object, ...]:
    """One draw from each global generator and from ``generators``."""
    return (
        random.random(),
        float(np.random.rand()),
        torch.rand(2).tolist(),
        [torch.rand(1, generator=g).item() for g in generators],
    )


def error_of(call: Callable[[], object]) -> tuple[str, str] | None:
    """The type name and message of what ``call`` raises, or None."""
    try:
        call()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return None


def parts(state: rng_fork.RngState) -> dict[str, object]:
    """A snapshot as plain data, so the test process can unpickle it without this rank's extra codecs."""
    return {name: state.part(name) for name in state.names}


# --- DDP training with an evaluation on rank 0 --------------------------------


CPU = torch.device("cpu")


def _evaluate(model: nn.Module, loader: DataLoader[tuple[torch.Tensor, ...]], device: torch.device) -> None:
    """An evaluation that draws from every global generator, as real ones do."""
    model.eval()
    with torch.no_grad():
        for (x,) in loader:  # a shuffled loader: draws its base seed and its order from torch
            x = x.to(device)
            model(x + torch.randn_like(x))
            np.random.rand()
            random.random()
    model.train()


def _train(rank: int, world_size: int, isolation: str | None, device: torch.device) -> dict[str, Any]:
    seed_globals(0)  # the same on every rank, as in most DDP scripts
    data = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=data)
    dataset = TensorDataset(x, x.sum(dim=1, keepdim=True))
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler)
    test_loader = DataLoader(TensorDataset(x[:8]), batch_size=4, shuffle=True)
    layers = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 1)).to(device)
    model = DistributedDataParallel(layers, device_ids=None if device.type == "cpu" else [device])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    isolate = ISOLATIONS[isolation]() if isolation is not None else None
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            # Training draws from torch (dropout, the loader's base seed), NumPy and Python,
            # so an evaluation that moved any of them would change the weights.
            xb, yb = xb.to(device), yb.to(device)
            noise = torch.from_numpy(np.random.normal(0.0, 0.1, size=tuple(xb.shape))).float().to(device)
            loss = nn.functional.mse_loss(model((xb + noise) * random.uniform(0.9, 1.1)), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if isolate is not None and rank == 0:
                with isolate:
                    _evaluate(model.module, test_loader, device)
    report = rd.check_rng_in_sync()
    return {
        "weights": {k: v.detach().cpu().clone() for k, v in model.module.state_dict().items()},
        "in_sync": bool(report),
        "differing": report.differing,
    }


def ddp(rank: int, world_size: int, out: Path, device: torch.device = CPU) -> dict[str, Any]:
    """Train once without evaluation, then once per isolation with rank 0 evaluating every step."""
    runs = {"baseline": _train(rank, world_size, None, device)}
    for name in ISOLATIONS:
        runs[name] = _train(rank, world_size, name, device)
    return runs


def ddp_cuda(rank: int, world_size: int, out: Path) -> dict[str, Any]:
    """The DDP scenario on CUDA (gloo moves CUDA tensors too): the ranks share the GPUs there are."""
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # deterministic matmuls, set before cuBLAS starts
    index = rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    torch.cuda.init()
    return ddp(rank, world_size, out, torch.device("cuda", index))


# --- gather, broadcast, check in sync and checkpoints on two ranks -------------


class HolderSource(ValueSource):
    """A registered source over a plain value, so one rank can have a source the other lacks."""

    def __init__(self, name: str, value: int, *, fail_restore: bool = False) -> None:
        super().__init__(name, value)
        self.fail_restore = fail_restore

    def load(self, part: Any) -> None:
        if self.fail_restore:
            raise RuntimeError(f"{self.name} cannot be restored here")
        super().load(part)


def collectives(rank: int, world_size: int, out: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    # Per-rank streams, as after seeding with the rank.
    rng_fork.seed_all(100 + rank)
    seen["own"] = get_rng_state()
    seen["gathered"] = rd.gather_rng_state()
    seen["after_gather"] = get_rng_state()
    report = rd.check_rng_in_sync()
    seen["sync_before"] = (bool(report), report.differing, str(report))

    g = torch.Generator().manual_seed(rank)
    seen["src_state"] = get_rng_state(generators=[g])
    rd.broadcast_rng_state(src=1, generators=[g])
    seen["after_broadcast"] = get_rng_state(generators=[g])
    report = rd.check_rng_in_sync(generators=[g])
    seen["sync_after"] = (bool(report), report.differing, str(report))
    seen["draws_after_broadcast"] = draws(g)
    seen["bad_src"] = error_of(lambda: rd.broadcast_rng_state(src=world_size))

    # A per-rank checkpoint that rank 0 alone writes.
    rng_fork.seed_all(200 + rank)
    seen["saved"] = get_rng_state()
    state_dict = rd.rng_state_dict()
    if rank == 0:
        torch.save(state_dict, out / "rng.pt")
    dist.barrier()
    seen["expected"] = draws()
    draws()
    report_ = rd.load_rng_state_dict(torch.load(out / "rng.pt", weights_only=True))
    seen["load_report"] = report_
    seen["restored_draws"] = draws()

    # Rank 1's entry is corrupt: rank 0's is fine, yet no rank may restore.
    if rank == 0:
        bad = torch.load(out / "rng.pt", weights_only=True)
        bad["ranks"][1]["torch"]["state"] = bad["ranks"][1]["torch"]["state"][:-1]
        torch.save(bad, out / "bad.pt")
    dist.barrier()
    before = get_rng_state()
    seen["corrupt_before"] = before
    seen["corrupt"] = error_of(lambda: rd.load_rng_state_dict(torch.load(out / "bad.pt", weights_only=True)))
    seen["corrupt_unchanged"] = get_rng_state() == before

    # A checkpoint of a one-rank group, loaded into two ranks.
    solo = dist.new_group([0])
    if rank == 0:
        seen["solo_saved"] = get_rng_state()
        one = rd.rng_state_dict(group=solo)
        seen["solo_world_size"] = one["world_size"]
        torch.save(one, out / "one.pt")
    else:
        seen["not_member"] = error_of(lambda: rd.gather_rng_state(group=solo))
    dist.barrier()
    one = torch.load(out / "one.pt", weights_only=True)
    draws()
    before = get_rng_state()
    seen["grow_before"] = before
    seen["grow_strict"] = error_of(lambda: rd.load_rng_state_dict(one))
    seen["grow_strict_unchanged"] = get_rng_state() == before
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen["grow_report"] = rd.load_rng_state_dict(one, strict=False)
    seen["grow_warnings"] = [str(w.message) for w in caught]
    seen["after_grow"] = get_rng_state()

    # Ranks handed different checkpoints must not each do their own thing.
    mine = torch.load(out / ("rng.pt" if rank == 0 else "one.pt"), weights_only=True)
    before = get_rng_state()
    seen["mixed"] = error_of(lambda: rd.load_rng_state_dict(mine, strict=False))
    seen["mixed_unchanged"] = get_rng_state() == before

    # Rank 1 has a source rank 0 lacks: a strict broadcast fails everywhere.
    rng_fork.seed_all(300 + rank)
    if rank == 1:
        rng_fork.register_source(HolderSource("extra", 7))
    before = get_rng_state()
    seen["extra_before"] = parts(before)
    seen["extra_strict"] = error_of(lambda: rd.broadcast_rng_state(src=0))
    seen["extra_strict_unchanged"] = get_rng_state() == before
    rd.broadcast_rng_state(src=0, strict=False)
    seen["extra_loose"] = parts(get_rng_state())
    if rank == 1:
        rng_fork.unregister_source("extra")

    # One rank cannot read its own state (NumPy's global on PCG64, a bad generators= entry):
    # every rank raises at once instead of waiting for it in the collective.
    if rank == 0:
        mt = np.random.get_bit_generator()
        np.random.set_bit_generator(np.random.PCG64(0))
    seen["unreadable_broadcast"] = error_of(lambda: rd.broadcast_rng_state(src=0))
    seen["unreadable_gather"] = error_of(rd.gather_rng_state)
    if rank == 0:
        np.random.set_bit_generator(mt)
    seen["bad_generators"] = error_of(lambda: rd.rng_state_dict(generators=["x"] if rank == 1 else ()))

    # Validation passes everywhere but restoring fails on rank 1: every rank hears of it.
    rng_fork.register_source(HolderSource("flaky", rank, fail_restore=rank == 1))
    seen["flaky_saved"] = parts(get_rng_state())
    state_dict = rd.rng_state_dict()
    draws()
    seen["restore_failure"] = error_of(lambda: rd.load_rng_state_dict(state_dict))
    seen["flaky_after"] = parts(get_rng_state())
    rng_fork.unregister_source("flaky")
    return seen


def one_device_per_rank(rank: int, world_size: int, out: Path) -> dict[str, Any]:
    """Every rank sees two devices and draws on its own, as torchrun jobs without CUDA_VISIBLE_DEVICES do."""
    backend = FakeLazyBackend(count=world_size)
    backend.set_device(rank)
    rng_fork.register_source(LazyDeviceFamily("fakedev", backend))
    seen: dict[str, Any] = {"current": current_devices()}  # before initialization: none
    backend.init()
    seen["current_initialized"] = current_devices()
    rng_fork.seed_all(0)
    generators = backend.default_generators
    backend.rand(rank)  # in step: each rank drew once from its own device
    seen["in_step"] = rd.check_rng_in_sync().differing
    if rank == 0:
        backend.rand(0)
    seen["apart"] = rd.check_rng_in_sync().differing
    other = generators[1 - rank].get_state()
    rd.broadcast_rng_state(src=0)
    seen["after_broadcast"] = rd.check_rng_in_sync().differing
    seen["other_kept"] = torch.equal(generators[1 - rank].get_state(), other)
    seen["own_draws"] = backend.rand(rank)
    return seen


SCENARIOS: dict[str, Callable[[int, int, Path], dict[str, Any]]] = {
    "ddp": ddp,
    "ddp_cuda": ddp_cuda,
    "collectives": collectives,
    "one_device_per_rank": one_device_per_rank,
}
