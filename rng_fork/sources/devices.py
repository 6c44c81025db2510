"""Sources for accelerators whose runtime initializes lazily (CUDA, XPU, MTIA).

Reading a device generator initializes its runtime, which breaks forked
DataLoader workers and costs seconds. So a device's generators are captured
only while its runtime is already initialized; otherwise a guard undoes what a
block does to the not-yet-initialized runtime: seeds it queued for a later
initialization, or an initialization it caused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from .base import RngSource
from .objects import TorchGeneratorSource

QueuedCall = tuple[Callable[[], None], Any]


class LazyDeviceSource(RngSource):
    """Every device of one lazily initialized backend, as ``name:0``, ``name:1``, ...

    ``module`` is the backend's torch module (``torch.cuda``, ``torch.xpu``):
    anything with ``is_initialized``, ``device_count``, ``default_generators``,
    ``manual_seed_all``, ``_lazy_call``, ``_queued_calls`` and
    ``_lazy_seed_tracker``, which lets tests stand one in on the CPU.
    """

    REQUIRED = (
        "is_initialized", "device_count", "default_generators", "manual_seed_all",
        "set_rng_state", "_queued_calls", "_lazy_seed_tracker",
    )
    """What a backend module needs for this source."""

    def __init__(self, name: str, module: ModuleType | Any, *, device_type: str | None = None) -> None:
        self.name = name
        self.module = module
        self.device_type = device_type or name
        self.codec = TorchGeneratorSource.codec
        self._count: int | None = None

    def available(self) -> bool:
        return bool(self.module.is_initialized())

    def inert(self) -> bool:
        # Without devices the runtime can never initialize.
        return not self.device_count()

    def device_count(self) -> int:
        """Devices visible to the backend; asks the driver without initializing.

        Cached: the count cannot change within a process (torch caches it too).
        """
        if self._count is None:
            try:
                self._count = int(self.module.device_count())
            except Exception:  # noqa: BLE001 - a backend whose driver cannot be asked has no devices to fork
                self._count = 0
        return self._count

    def check_devices(self, devices: Sequence[int]) -> None:
        # A backend with no devices at all is skipped, so code written with
        # devices=[0] also runs on a machine without that accelerator.
        count = self.device_count() if devices else 0
        if not count:
            return
        missing = [i for i in devices if i >= count]
        if missing:
            raise ValueError(f"{self.name} has {count} device(s); no device {missing[0]} to fork")

    def _indices(self, devices: Sequence[int] | None) -> Sequence[int]:
        return range(len(self.module.default_generators)) if devices is None else devices

    def expand(self, devices: Sequence[int] | None) -> Sequence[RngSource]:
        if not self.available():
            return ()
        generators = self.module.default_generators
        return tuple(TorchGeneratorSource(f"{self.name}:{i}", generators[i]) for i in self._indices(devices))

    def resolve(self, name: str) -> RngSource | None:
        prefix, _, index = name.partition(":")
        if prefix != self.name or not index.isdigit():
            return None
        device = int(index)
        if self.available():
            generators = self.module.default_generators
            return TorchGeneratorSource(name, generators[device]) if device < len(generators) else None
        if device < self.device_count():
            return _QueuedDeviceSource(name, self.module, device, self.device_type)
        return None

    def capture(self) -> Any:
        raise TypeError(f"{self.name} stands for several devices; capture each of expand()")

    def restore(self, part: Any) -> None:
        raise TypeError(f"{self.name} stands for several devices; restore each of expand()")

    def seed(self, seed: int) -> None:
        """Seed every device, lazily (at initialization) if the runtime is not up yet."""
        self.module.manual_seed_all(seed)

    def guard(self, devices: Sequence[int] | None) -> _LazyInitGuard | None:
        # A backend without devices can never initialize: nothing to guard.
        if self.available() or devices == () or not hasattr(self.module, "_lazy_seed_tracker"):
            return None
        return _LazyInitGuard(self.module, devices) if self.device_count() else None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "initialized": self.available(), "device_count": self.device_count()}


class _QueuedDeviceSource(TorchGeneratorSource):
    """A device of an uninitialized runtime: restoring it queues the state for initialization."""

    def __init__(self, name: str, module: Any, device: int, device_type: str) -> None:
        self.name = name
        self.module = module
        self.device = device
        self.device_type = device_type

    def capture(self) -> Any:
        raise TypeError(f"capturing {self.name} would initialize its runtime")

    def restore(self, part: Any) -> None:
        # torch's own set_rng_state queues the state while uninitialized.
        self.module.set_rng_state(part.tensor, self.device)

    def seed(self, seed: int) -> None:
        raise TypeError(f"seeding {self.name} alone would initialize its runtime")

    def check_target(self, part: Any) -> None:
        if part.device_type != self.device_type:
            raise ValueError(f"a {part.device_type} generator state cannot go into {self.name}")


def _is_rng_call(call: QueuedCall, module: Any) -> bool:
    target = getattr(call[0], "__module__", None) or ""
    return target == f"{module.__name__}.random" or target == __name__


class _LazyInitGuard:
    """Makes a block invisible to a runtime that was not initialized when it began.

    At exit, a seed the block queued (``torch.manual_seed`` queues one for every
    lazy backend) is dropped, so it cannot hit a later initialization. If the
    block initialized the runtime, each device is put back to the state it had
    just after initialization, before the block drew from it, and the seeds that
    were queued before the block are applied again, as initialization would have.
    That first state is recorded by a call queued here: torch runs queued calls
    at initialization after creating the generators and before queued seeds.
    """

    def __init__(self, module: Any, devices: Sequence[int] | None) -> None:
        self.module = module
        self.devices = devices
        tracker = module._lazy_seed_tracker
        self._tracker = (tracker.manual_seed_all_cb, tracker.manual_seed_cb, list(tracker.call_order))
        self._queue: list[QueuedCall] = list(module._queued_calls)
        self._fresh: dict[int, Any] | None = None
        # Queued directly: torch's _lazy_call formats a stack trace (hundreds of microseconds).
        module._queued_calls.append((self._record_fresh, []))

    def _indices(self) -> Sequence[int]:
        count = len(self.module.default_generators)
        return range(count) if self.devices is None else [i for i in self.devices if i < count]

    def _record_fresh(self) -> None:
        generators = self.module.default_generators
        self._fresh = {i: generators[i].get_state() for i in self._indices()}

    def seed(self, seed: int) -> None:
        before = [entry for entry in self._tracker[2] if entry]

        def seed_listed() -> None:
            # Queued as the latest seed-all, this replaces earlier queued seeds,
            # so it first applies them and then seeds the forked devices.
            for call, _ in before:
                call()
            for i in self._indices():
                self.module.default_generators[i].manual_seed(seed)

        self.module._lazy_seed_tracker.queue_seed_all(seed_listed, [])

    def release(self) -> None:
        module = self.module
        tracker = module._lazy_seed_tracker
        tracker.manual_seed_all_cb, tracker.manual_seed_cb, call_order = self._tracker
        tracker.call_order = list(call_order)
        if not module.is_initialized():
            added = module._queued_calls[len(self._queue):]
            module._queued_calls[:] = self._queue + [c for c in added if not _is_rng_call(c, module)]
            return
        if self._fresh is None:
            return
        generators = module.default_generators
        # The queued seeds reach every device; devices outside the fork keep
        # what the block did to them.
        unforked = {i: g.get_state() for i, g in enumerate(generators) if i not in self._fresh}
        for i, state in self._fresh.items():
            generators[i].set_state(state)
        for entry in call_order:
            if entry:
                entry[0]()
        for i, state in unforked.items():
            generators[i].set_state(state)
