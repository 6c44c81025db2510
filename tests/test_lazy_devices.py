"""The lazy-device logic (what torch.cuda needs) against a stand-in backend on the CPU.

The real-GPU versions of these tests are in test_cuda.py.
"""

from __future__ import annotations

import pytest
import torch

import rng_fork
from rng_fork import fork_rng
from rng_fork.sources import LazyDeviceFamily

from .fakebackend import FakeLazyBackend
from .helpers import registered


def _seeded(seed: int) -> torch.Tensor:
    return torch.Generator().manual_seed(seed).get_state()


def test_initialized_devices_are_forked(fake: FakeLazyBackend) -> None:
    fake.init()
    assert rng_fork.get_rng_state().names[-2:] == ("fake:0", "fake:1")
    before = [g.get_state() for g in fake.default_generators]
    with fork_rng():
        fake.rand(0)
        fake.rand(1)
    assert all(torch.equal(g.get_state(), s) for g, s in zip(fake.default_generators, before))


def test_fork_does_not_initialize(fake: FakeLazyBackend) -> None:
    with fork_rng(seed=3):
        torch.rand(2)
    assert not fake.is_initialized()
    assert "fake:0" not in rng_fork.get_rng_state().names


def test_block_that_initializes_leaves_fresh_generators(fake: FakeLazyBackend) -> None:
    with fork_rng():
        fake.rand(0)
        fake.rand(1, 10)
    assert fake.is_initialized()
    for generator, fresh in zip(fake.default_generators, fake.creation_states):
        assert torch.equal(generator.get_state(), fresh)


def test_block_that_initializes_reapplies_seed_queued_before(fake: FakeLazyBackend) -> None:
    fake.manual_seed_all(7)
    with fork_rng():
        fake.rand(0)
        fake.manual_seed_all(99)
        fake.rand(1)
    for generator in fake.default_generators:
        assert torch.equal(generator.get_state(), _seeded(7))


def test_seed_queued_inside_block_does_not_leak(fake: FakeLazyBackend) -> None:
    tracker = fake._lazy_seed_tracker
    with fork_rng():
        fake.manual_seed_all(5)
        fake.manual_seed(6)
        fake.set_rng_state(_seeded(8), 1)
        torch.manual_seed(9)  # torch queues CUDA seeds the same way
    assert tracker.call_order == [] and tracker.manual_seed_cb is None and tracker.manual_seed_all_cb is None
    assert fake._queued_calls == []
    fake.init()
    for generator, fresh in zip(fake.default_generators, fake.creation_states):
        assert torch.equal(generator.get_state(), fresh)


def test_other_calls_queued_inside_block_are_kept(fake: FakeLazyBackend) -> None:
    ran: list[str] = []
    with fork_rng():
        fake._lazy_call(lambda: ran.append("setup"))
    assert len(fake._queued_calls) == 1
    fake.init()
    assert ran == ["setup"]


def test_seeded_block_seeds_lazily_and_deterministically(fake: FakeLazyBackend) -> None:
    with fork_rng(seed=5):
        inside = fake.rand(0)
    assert inside == torch.rand(3, generator=torch.Generator().manual_seed(5)).tolist()
    assert torch.equal(fake.default_generators[0].get_state(), fake.creation_states[0])


def test_devices_subset_when_uninitialized(fake: FakeLazyBackend) -> None:
    fake.manual_seed_all(1)
    with fork_rng(seed=5, devices=[0]):
        assert fake.rand(0) == torch.rand(3, generator=torch.Generator().manual_seed(5)).tolist()
        assert fake.rand(1) == torch.rand(3, generator=torch.Generator().manual_seed(1)).tolist()
    assert torch.equal(fake.default_generators[0].get_state(), _seeded(1))
    # Device 1 was not forked: what the block drew from it stays drawn.
    after_one_draw = torch.Generator().manual_seed(1)
    torch.rand(3, generator=after_one_draw)
    assert torch.equal(fake.default_generators[1].get_state(), after_one_draw.get_state())


def test_nested_blocks_initializing_inside(fake: FakeLazyBackend) -> None:
    with fork_rng(seed=11):
        with fork_rng():
            fake.rand(0)
        # The inner block's draw is undone; the outer block's seed still holds.
        assert fake.rand(0) == torch.rand(3, generator=torch.Generator().manual_seed(11)).tolist()
    assert torch.equal(fake.default_generators[0].get_state(), fake.creation_states[0])


def test_devices_empty_leaves_backend_alone(fake: FakeLazyBackend) -> None:
    with fork_rng(devices=[]):
        fake.manual_seed_all(4)
    fake.init()
    assert torch.equal(fake.default_generators[0].get_state(), _seeded(4))


def test_set_rng_state_queues_device_parts(fake: FakeLazyBackend) -> None:
    fake.init()
    fake.rand(1)
    state = rng_fork.get_rng_state()
    expected = fake.default_generators[1].get_state()
    other = FakeLazyBackend(count=2)
    rng_fork.register_source(LazyDeviceFamily("fake", other, device_type="cpu"), replace=True)
    rng_fork.set_rng_state(state)
    assert not other.is_initialized()
    other.init()
    assert torch.equal(other.default_generators[1].get_state(), expected)


def test_missing_device_index(fake: FakeLazyBackend) -> None:
    with pytest.raises(ValueError, match=r"has \d device\(s\); no device 2 to fork"):
        with fork_rng(devices=[2]):
            pass
    sd = rng_fork.get_rng_state().state_dict()
    sd["fake:5"] = rng_fork.get_rng_state(generators=[torch.Generator()]).state_dict()["generator:0"]
    with pytest.raises(ValueError, match="fake:5"):
        rng_fork.set_rng_state(sd)


@pytest.mark.parametrize("name", ["xpu", "mtia"])
def test_other_lazy_backends_are_registered_and_inert_without_devices(name: str) -> None:
    module = getattr(torch, name)
    entry = next(e for e in rng_fork.info() if e["name"] == name)
    assert entry["initialized"] is False and entry["device_count"] == module.device_count()
    if module.device_count():
        pytest.skip(f"this machine has {name} devices")
    with fork_rng(seed=1, devices=[0]):
        torch.rand(1)
    assert not module.is_initialized()
    assert not any(n.startswith(f"{name}:") for n in rng_fork.get_rng_state().names)


def test_a_fork_sees_a_backend_initialize_between_forks(fake: FakeLazyBackend) -> None:
    # The first fork caches a plan without the backend's devices; the next one
    # must notice the initialization and fork them.
    with fork_rng():
        pass
    fake.init()
    before = [g.get_state() for g in fake.default_generators]
    with fork_rng():
        fake.rand(0)
    assert torch.equal(fake.default_generators[0].get_state(), before[0])


def test_a_backend_without_devices_is_inert() -> None:
    from rng_fork._swap import plan_for

    empty = FakeLazyBackend(count=0)
    source = LazyDeviceFamily("empty", empty, device_type="cpu")
    with registered(source):
        assert source.inert()
        plan = plan_for(None)
        assert source not in plan.guarded
        assert source.available not in plan.probes
        with fork_rng(seed=2):
            torch.rand(1)
        assert not empty._queued_calls and not empty.is_initialized()


def test_a_seeded_stream_seeds_a_backend_that_initialized_between_its_entries(fake: FakeLazyBackend) -> None:
    stream = rng_fork.RngStream(seed=3)
    with stream:
        torch.rand(1)  # the backend is not up: nothing of it is saved
    fake.init()
    before = [g.get_state() for g in fake.default_generators]
    with stream:
        got = fake.rand(1)
    assert got == torch.rand(3, generator=torch.Generator().manual_seed(3)).tolist()
    assert all(torch.equal(g.get_state(), s) for g, s in zip(fake.default_generators, before))
    with stream:  # and goes on from there
        assert fake.rand(1) == torch.rand(6, generator=torch.Generator().manual_seed(3)).tolist()[3:]


class _CountedGuards(LazyDeviceFamily):
    """Counts the guards a fork asks for."""

    asked = 0

    def guard(self, devices: object) -> object:  # type: ignore[override]
        _CountedGuards.asked += 1
        return super().guard(devices)  # type: ignore[arg-type]


def test_a_backend_is_guarded_until_it_initializes_and_then_forked_without_asking() -> None:
    backend = FakeLazyBackend(count=2)
    family = _CountedGuards("counted", backend, device_type="cpu")
    with registered(family):
        with fork_rng():
            backend.rand(0)  # initializes inside: the guard makes the block leave fresh generators
        assert _CountedGuards.asked == 1
        fresh = [g.get_state() for g in backend.default_generators]
        assert all(torch.equal(g, s) for g, s in zip(fresh, backend.creation_states))
        for _ in range(3):
            with fork_rng():
                backend.rand(1)
        assert _CountedGuards.asked == 1  # initialized: its devices are saved, no guard is asked for
        assert all(torch.equal(g.get_state(), s) for g, s in zip(backend.default_generators, fresh))
