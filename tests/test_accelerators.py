"""Backends other than CUDA, and CUDA graph capture, against stand-in modules on the CPU.

``ModuleDeviceFamily`` covers MPS and PrivateUse1 backends that offer only RNG
functions; ``LazyDeviceFamily`` (see test_lazy_devices.py) those that copy
torch.cuda. The real-hardware checks are in test_cuda.py.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator

import pytest
import torch

import rng_fork
from rng_fork import RngForkWarning, RngStream, fork_rng
from rng_fork.sources import LazyDeviceFamily, ModuleDeviceFamily, current_devices, device_family

from .fakebackend import FakeLazyBackend, FakeModuleBackend
from .helpers import ValueSource, registered


def _states(backend: FakeModuleBackend) -> list[torch.Tensor]:
    return [backend.get_rng_state(i) for i in range(backend.count)]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_initialized_devices_are_forked_and_snapshotted(acc: FakeModuleBackend) -> None:
    acc.init()
    before = _states(acc)
    with fork_rng():
        acc.rand(0)
        acc.rand(1, 50)
    assert _same(_states(acc), before)
    state = rng_fork.get_rng_state()
    assert state.names[-2:] == ("acc:0", "acc:1")
    acc.rand(1)
    rng_fork.set_rng_state(state.state_dict())
    assert _same(_states(acc), before)


def test_seeded_fork_seeds_every_device(acc: FakeModuleBackend) -> None:
    acc.init()
    with fork_rng(seed=5):
        got = [acc.rand(0), acc.rand(1)]
    expected = torch.rand(3, generator=torch.Generator().manual_seed(5)).tolist()
    assert got == [expected, expected]


def test_uninitialized_backend_is_left_alone(acc: FakeModuleBackend) -> None:
    with fork_rng(seed=1):
        torch.rand(1)
    assert not acc._initialized
    assert not any(name.startswith("acc:") for name in rng_fork.get_rng_state().names)


def test_a_block_that_initializes_it_is_reported(acc: FakeModuleBackend) -> None:
    with pytest.warns(RngForkWarning, match="initialized acc"):
        with fork_rng():
            acc.rand(0)
    with fork_rng(devices=[]):  # devices=[] leaves every device type alone, silently
        acc.rand(0)


def test_a_backend_without_a_lazy_flag_is_forked_whenever_it_has_devices() -> None:
    mps_like = FakeModuleBackend(count=1, lazy=False)
    source = ModuleDeviceFamily("mpslike", mps_like, device_type="cpu")
    with registered(source):
        assert source.available() and not source.inert()
        before = _states(mps_like)
        with fork_rng():
            mps_like.rand(0)
        assert _same(_states(mps_like), before)


def test_several_device_types_are_forked_together(acc: FakeModuleBackend) -> None:
    lazy = FakeLazyBackend(count=2)
    with registered(LazyDeviceFamily("lazyacc", lazy, device_type="cpu")):
        acc.init()
        lazy.init()
        before = (_states(acc), [g.get_state() for g in lazy.default_generators])
        with fork_rng(devices=[1]):
            acc.rand(1)
            lazy.rand(1)
        assert _same(_states(acc), before[0])
        assert _same([g.get_state() for g in lazy.default_generators], before[1])


def test_device_source_picks_the_adapter() -> None:
    assert type(device_family("cuda")) is LazyDeviceFamily
    assert type(device_family("fake", FakeLazyBackend())) is LazyDeviceFamily
    assert type(device_family("acc", FakeModuleBackend())) is ModuleDeviceFamily
    with pytest.raises(ValueError, match="no module for device type 'nosuchdevice'"):
        device_family("nosuchdevice")
    with pytest.raises(TypeError, match="no get_rng_state, set_rng_state"):
        device_family("bare", object.__new__(type("Bare", (), {"device_count": lambda self: 1})))


def test_current_devices_names_each_initialized_types_current_device(acc: FakeModuleBackend) -> None:
    lazy = FakeLazyBackend(count=2)
    single = FakeModuleBackend(count=1, lazy=False)
    with registered(
        LazyDeviceFamily("lazyacc", lazy, device_type="cpu"), ModuleDeviceFamily("single", single, device_type="cpu")
    ):
        # Uninitialized types have none (asking would initialize them); a module without
        # current_device has one only if it has a single device (MPS).
        assert current_devices() == {"single": "single:0"}
        assert not lazy.is_initialized()
        lazy.init()
        lazy.set_device(1)
        acc.init()
        assert current_devices() == {"lazyacc": "lazyacc:1", "single": "single:0"}
        acc.current_device = lambda: 1  # type: ignore[attr-defined]
        assert current_devices()["acc"] == "acc:1"


def test_mps_is_registered_and_inert_without_a_device() -> None:
    entry = next(e for e in rng_fork.info() if e["name"] == "mps")
    assert entry["type"] == "ModuleDeviceFamily"
    if torch.mps.device_count():
        pytest.skip("this machine has an MPS device")
    assert entry["available"] is False and entry["device_count"] == 0


# --- CUDA graph capture -------------------------------------------------------


CAPTURE_ERROR = "Cannot call CUDAGeneratorImpl::current_seed during CUDA graph capture"
SEED_ERROR = "CUDAGeneratorImpl::set_current_seed can be called during stream capture only if new seed is the same"


class _CapturableGenerator:
    """A device generator that behaves as CUDA's does while its backend captures a graph.

    Before torch 2.10 (``graph_safe=False``) it refuses to be read or set; since
    then it takes any state with its own seed, refuses seeds that differ and
    ignores (without resetting the offset) a seed equal to its own.
    """

    def __init__(self, backend: _CapturingBackend, inner: torch.Generator) -> None:
        self.backend = backend
        self.inner = inner
        self.device = inner.device

    def _check(self, seed: int | None = None) -> None:
        if not self.backend.capturing:
            return
        if not self.backend.graph_safe:
            raise RuntimeError(CAPTURE_ERROR)
        if seed is not None and seed != self.inner.initial_seed():
            raise RuntimeError(SEED_ERROR)

    def get_state(self) -> torch.Tensor:
        self._check()
        return self.inner.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        probe = torch.Generator()
        probe.set_state(state)
        self._check(probe.initial_seed())
        self.inner.set_state(state)

    def manual_seed(self, seed: int) -> None:
        self._check(seed)
        if not self.backend.capturing:
            self.inner.manual_seed(seed)


class _CapturingBackend(FakeLazyBackend):
    capturing = False
    graph_safe = False

    def is_current_stream_capturing(self) -> bool:
        return self.capturing

    def init(self) -> None:
        super().init()
        self.default_generators = tuple(_CapturableGenerator(self, g) for g in self.default_generators)  # type: ignore[misc]


@pytest.fixture
def capturing() -> Iterator[_CapturingBackend]:
    backend = _CapturingBackend(count=1)
    backend.init()
    with registered(LazyDeviceFamily("graphs", backend, device_type="cpu")):
        yield backend


def test_fork_during_graph_capture_raises_a_clear_error_and_changes_nothing(capturing: _CapturingBackend) -> None:
    cpu_before = torch.get_rng_state()
    capturing.capturing = True
    with pytest.raises(RuntimeError, match=r"graphs:0: during CUDA graph capture.*outside the captured region"):
        with fork_rng():
            torch.rand(1)
    assert torch.equal(torch.get_rng_state(), cpu_before)
    with pytest.raises(RuntimeError, match="outside the captured region"):
        rng_fork.get_rng_state()


def test_unseeded_fork_inside_a_graph_safe_capture_isolates(capturing: _CapturingBackend) -> None:
    capturing.graph_safe = True
    inner = capturing.default_generators[0].inner
    capturing.capturing = True
    before = inner.get_state()
    expected = torch.rand(3, generator=inner)
    inner.set_state(before)
    with fork_rng():
        torch.rand(5, generator=inner)
    assert torch.equal(torch.rand(3, generator=inner), expected)


class _SeedRecorder(ValueSource):
    """A registered source that records every seed it is given."""

    def __init__(self) -> None:
        super().__init__("recorder")
        self.seeds: list[int] = []

    def seed(self, seed: int) -> None:
        self.seeds.append(seed)


@pytest.mark.parametrize("graph_safe", [False, True])
def test_seeds_and_streams_during_graph_capture_raise_a_clear_error_before_any_change(
    capturing: _CapturingBackend, graph_safe: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    capturing.graph_safe = graph_safe
    # Spies on the first source seeded (Python's) and on one registered after the device.
    python_seeds: list[object] = []
    monkeypatch.setattr(random._inst, "seed", python_seeds.append)
    recorder = _SeedRecorder()
    with registered(recorder):
        seeded, unseeded, started = RngStream(seed=11), RngStream(), RngStream()
        with started:
            pass
        current_seed = 7
        capturing.default_generators[0].inner.manual_seed(current_seed)
        before = rng_fork.get_rng_state()
        capturing.capturing = True
        cpu_before = torch.get_rng_state()
        # Even the seed the device already has: torch would ignore it there, leaving the block unseeded.
        for seed in (3, current_seed):
            with pytest.raises(RuntimeError, match=r"graphs:0: during CUDA graph capture torch can neither seed"):
                with fork_rng(seed=seed):
                    torch.rand(1)
        with pytest.raises(RuntimeError, match="graphs:0: during CUDA graph capture"):
            rng_fork.seed_all(current_seed)
        for stream in (seeded, unseeded, started):
            with pytest.raises(RuntimeError, match="enter RngStreams outside the captured region"):
                with stream:
                    torch.rand(1)
        assert recorder.seeds == [] and python_seeds == []  # refused before anything was seeded
        assert torch.equal(torch.get_rng_state(), cpu_before)
        capturing.capturing = False
        assert rng_fork.get_rng_state() == before


@pytest.mark.parametrize("graph_safe", [False, True])
def test_snapshots_are_refused_during_graph_capture(capturing: _CapturingBackend, graph_safe: bool) -> None:
    # Even where torch allows it, a snapshot there would hold the graph's offset, not the generator's.
    capturing.graph_safe = graph_safe
    outside = rng_fork.get_rng_state()
    capturing.capturing = True
    with pytest.raises(RuntimeError, match="take or load snapshots .* outside the captured region"):
        rng_fork.get_rng_state()
    torch.rand(1)
    cpu_before = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="take or load snapshots"):
        rng_fork.set_rng_state(outside)
    assert torch.equal(torch.get_rng_state(), cpu_before)


def test_fork_of_cpu_sources_works_during_graph_capture(capturing: _CapturingBackend) -> None:
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    capturing.capturing = True
    with fork_rng(devices=[]):
        torch.rand(5)
    capturing.capturing = False
    assert torch.equal(torch.rand(2), expected)


def test_other_errors_of_a_device_generator_pass_through(capturing: _CapturingBackend) -> None:
    def broken() -> torch.Tensor:
        raise RuntimeError("device lost")

    capturing.default_generators[0].get_state = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="^device lost$"):
        with fork_rng():
            pass


def test_seeding_some_devices_leaves_the_others(acc: FakeModuleBackend) -> None:
    acc.init()
    other = acc.get_rng_state(1)
    with fork_rng(seed=0, devices=[0]):
        got = acc.rand(0)
        assert torch.equal(acc.get_rng_state(1), other)
    assert got == torch.rand(3, generator=torch.Generator().manual_seed(0)).tolist()
    assert torch.equal(acc.get_rng_state(1), other)


def test_a_failing_guard_is_named(acc: FakeModuleBackend) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RngForkWarning)
        with pytest.raises(rng_fork.RngRestoreError) as info:
            with fork_rng():
                acc.init()
    assert list(info.value.failures) == ["acc"]


def test_loading_a_stream_leaves_devices_it_does_not_cover(acc: FakeModuleBackend) -> None:
    acc.init()
    source_stream = rng_fork.RngStream(seed=0)
    with source_stream:
        acc.rand(0)
        acc.rand(1)
    checkpoint = source_stream.state_dict()
    assert {"acc:0", "acc:1"} <= set(checkpoint["state"])
    before = _states(acc)
    stream = rng_fork.RngStream(devices=[0])
    stream.load_state_dict(checkpoint)
    assert _same(_states(acc), before)
    with stream:
        acc.rand(0)
        acc.rand(1)  # drawn from the caller's acc:1, which the stream does not cover
    assert torch.equal(acc.get_rng_state(0), before[0])
    assert not torch.equal(acc.get_rng_state(1), before[1])
