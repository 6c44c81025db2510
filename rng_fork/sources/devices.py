"""Accelerators: one family per device type, one generator per device, and CUDA graph capture.

Reading a device generator can initialize its runtime, which breaks forked
DataLoader workers and costs seconds. So a device's generators are captured
only while its runtime is already initialized. For backends with torch.cuda's
lazy machinery (CUDA, XPU, MTIA, PrivateUse1 backends that copy it) a guard
undoes what a block does to a not-yet-initialized runtime: seeds it queued for
a later initialization, or an initialization it caused. Backends reached only
through their module's RNG functions (MPS, other PrivateUse1 backends) are
forked while initialized; a block that initializes one is reported.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence
from types import ModuleType
from typing import Any, cast

import torch

from ..errors import RngForkWarning
from .base import Devices, Part, RngFamily, RngSource, Savers
from .torch_generators import TorchGeneratorSource, TorchState, check_device_type

QueuedCall = tuple[Callable[[], None], Any]


def _never() -> bool:
    return False


# --- CUDA graph capture -----------------------------------------------------------

GRAPH_CAPTURE_HELP = (
    "{name}: during CUDA graph capture torch can neither seed a device generator nor give it a state "
    "with another seed (a captured graph keeps the seed it was captured with), a snapshot there would "
    "hold the graph's offset instead of the generator's, and before torch 2.10 torch cannot read or set "
    "its state at all. Seed, take or load snapshots and enter RngStreams outside the captured region "
    "(around torch.cuda.graph), or pass devices=[] to leave the devices out inside it; fork_rng() "
    "without a seed works inside a capture on torch 2.10 and later."
)


def graph_capturing(module: Any) -> bool:
    """Whether ``module`` (``torch.cuda``, a stand-in) is capturing a graph on its current stream now."""
    capturing = getattr(module, "is_current_stream_capturing", None)
    if capturing is None:
        return False
    try:
        # Asked only of an initialized runtime: the question itself may create a context.
        initialized = getattr(module, "is_initialized", None)
        return (initialized is None or bool(initialized())) and bool(capturing())
    except Exception:  # noqa: BLE001 - no answer means: not known to be capturing
        return False


class DeviceGeneratorSource(TorchGeneratorSource):
    """A device's generator (a device's default one, or a CUDA generator passed as ``generators=``),
    which may be part of a CUDA graph being captured.

    Since torch 2.10 a CUDA generator's state can be read and set while a graph
    is captured: the offset is then the graph's own, so a fork inside a capture
    isolates the captured draws as it does eager ones. A seed there is refused
    (torch ignores one equal to the current seed), as are snapshots, whose
    offset would be the graph's; torch's own failures during a capture are
    explained.
    """

    def __init__(self, name: str, obj: Any, module: Any = None) -> None:
        super().__init__(name, obj)
        # The backend module that says whether a graph is being captured.
        self.module: Any = module if module is not None else getattr(torch, self.device_type, None)
        self._save = self._explaining(obj.get_state)
        self._load = self._explaining(obj.set_state)

    def _raw_view(self) -> None:
        return None  # a device's state goes through torch, which explains a graph capture

    def _explaining(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def explained(*args: Any) -> Any:
            try:
                return call(*args)
            except RuntimeError:
                if not graph_capturing(self.module):
                    raise
                raise RuntimeError(GRAPH_CAPTURE_HELP.format(name=self.name)) from None

        return explained

    def check_not_graph_capturing(self) -> None:
        if graph_capturing(self.module):
            raise RuntimeError(GRAPH_CAPTURE_HELP.format(name=self.name))

    def save(self) -> torch.Tensor:
        return cast(torch.Tensor, self._save())

    def load(self, saved: torch.Tensor) -> None:
        self._load(saved)

    def savers(self) -> Savers:
        return self._save, self._load

    def capture(self) -> Part:
        self.check_not_graph_capturing()
        return super().capture()

    def seed(self, seed: int) -> None:
        self._explaining(self.obj.manual_seed)(seed)

    def check_target(self, part: Part) -> None:
        super().check_target(part)
        self.check_not_graph_capturing()


# --- device families ----------------------------------------------------------------


class _DeviceFamily(RngFamily):
    """What every per-device-type family shares: the device count and device selection."""

    def __init__(self, name: str, module: ModuleType | Any, *, device_type: str | None = None) -> None:
        self.name = name
        self.module = module
        self.device_type = device_type or name
        self.codec = TorchGeneratorSource.codec
        self._count: int | None = None

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

    def inert(self) -> bool:
        # Without devices the runtime can never initialize.
        return not self.device_count()

    def check_devices(self, devices: Sequence[int]) -> None:
        # A backend with no devices at all is skipped, so code written with
        # devices=[0] also runs on a machine without that accelerator.
        count = self.device_count() if devices else 0
        if not count:
            return
        missing = [i for i in devices if i >= count]
        if missing:
            raise ValueError(f"{self.name} has {count} device(s); no device {missing[0]} to fork")

    def current_device(self) -> int | None:
        """The device this process draws from by default, or None while the runtime is not up.

        In a job with one device per rank (``torch.cuda.set_device(local_rank)``)
        it is the rank's own device, whatever its index.
        """
        if not self.available():
            return None
        current = getattr(self.module, "current_device", None)
        if current is None:  # MPS: one device, no notion of a current one
            return 0 if self.device_count() == 1 else None
        try:
            return int(current())
        except Exception:  # noqa: BLE001 - a backend that cannot say has no current device to name
            return None

    def _index(self, name: str) -> int | None:
        prefix, _, index = name.partition(":")
        return int(index) if prefix == self.name and index.isdigit() else None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "initialized": self.available(), "device_count": self.device_count()}


class LazyDeviceFamily(_DeviceFamily):
    """Every device of one lazily initialized backend, as ``name:0``, ``name:1``, ...

    ``module`` is the backend's torch module (``torch.cuda``, ``torch.xpu``):
    anything with ``is_initialized``, ``device_count``, ``default_generators``,
    ``manual_seed_all``, ``set_rng_state``, ``_queued_calls`` and
    ``_lazy_seed_tracker``, which lets tests stand one in on the CPU.

    Example::

        register_source(LazyDeviceFamily("npu", torch.npu))   # a backend that copies torch.cuda
    """

    REQUIRED = (
        "is_initialized", "device_count", "default_generators", "manual_seed_all",
        "set_rng_state", "_queued_calls", "_lazy_seed_tracker",
    )
    """What a backend module needs for this family."""

    def available(self) -> bool:
        # Asked before every fork while the backend has devices, so one call:
        # torch's is_initialized is already false in a bad fork.
        return bool(self.module.is_initialized())

    def _indices(self, devices: Devices) -> Sequence[int]:
        return range(len(self.module.default_generators)) if devices is None else devices

    def expand(self, devices: Devices) -> Sequence[RngSource]:
        if not self.available():
            return ()
        generators = self.module.default_generators
        return tuple(
            DeviceGeneratorSource(f"{self.name}:{i}", generators[i], self.module) for i in self._indices(devices)
        )

    def resolve(self, name: str) -> RngSource | None:
        device = self._index(name)
        if device is None:
            return None
        if self.available():
            generators = self.module.default_generators
            return DeviceGeneratorSource(name, generators[device], self.module) if device < len(generators) else None
        if device < self.device_count():
            return _QueuedDevice(self, device)
        return None

    def seed(self, seed: int) -> None:
        """Seed every device, lazily (at initialization) if the runtime is not up yet."""
        self.module.manual_seed_all(seed)

    def guard(self, devices: Devices) -> _LazyInitGuard | None:
        # A backend without devices can never initialize: nothing to guard.
        if self.available() or devices == () or not hasattr(self.module, "_lazy_seed_tracker"):
            return None
        return _LazyInitGuard(self.name, self.module, devices) if self.device_count() else None


class ModuleDeviceFamily(_DeviceFamily):
    """Every device of a backend reached through its module's RNG functions, as ``name:0``, ...

    For MPS and PrivateUse1 backends without torch.cuda's lazy machinery:
    ``module`` needs ``device_count``, ``get_rng_state(device)`` and
    ``set_rng_state(state, device)``; ``is_initialized`` (if present) decides
    whether the devices are forked, and ``default_generators``,
    ``manual_seed`` or ``manual_seed_all`` seed them. A block that initializes
    such a backend cannot be undone (torch keeps no record of a fresh state);
    it gets an :class:`~rng_fork.RngForkWarning` instead.

    Example::

        register_source(ModuleDeviceFamily("mps", torch.mps))
    """

    REQUIRED = ("device_count", "get_rng_state", "set_rng_state")
    """What a backend module needs for this family."""

    def available(self) -> bool:
        module = self.module
        # In a child forked from a process that used the backend, torch refuses it.
        if getattr(module, "_is_in_bad_fork", _never)():
            return False
        is_initialized = getattr(module, "is_initialized", None)
        if is_initialized is None:  # no lazy initialization (MPS): usable whenever a device exists
            return self.device_count() > 0
        return bool(is_initialized())

    def expand(self, devices: Devices) -> Sequence[RngSource]:
        if not self.available():
            return ()
        indices = range(self.device_count()) if devices is None else devices
        return tuple(_ModuleDevice(self, i) for i in indices)

    def resolve(self, name: str) -> RngSource | None:
        device = self._index(name)
        if device is None or device >= self.device_count() or not self.available():
            return None
        return _ModuleDevice(self, device)

    def seed(self, seed: int) -> None:
        module = self.module
        if hasattr(module, "manual_seed_all"):
            module.manual_seed_all(seed)
        else:
            for i in range(self.device_count()):
                _ModuleDevice(self, i).seed(seed)

    def guard(self, devices: Devices) -> _InitWatch | None:
        if devices == () or self.available():
            return None
        return _InitWatch(self)


class _ModuleDevice(RngSource):
    """One device of a :class:`ModuleDeviceFamily`, saved as its state tensor."""

    def __init__(self, family: ModuleDeviceFamily, device: int) -> None:
        self.name = f"{family.name}:{device}"
        self.codec = family.codec
        self.family = family
        self.device = device

    def identity(self) -> Hashable:
        return (self.family.name, self.device)

    def save(self) -> torch.Tensor:
        return cast(torch.Tensor, self.family.module.get_rng_state(self.device))

    def load(self, saved: torch.Tensor) -> None:
        self.family.module.set_rng_state(saved, self.device)

    def part_of(self, saved: torch.Tensor) -> Part:
        return TorchState(self.family.device_type, saved)

    def saved_of(self, part: Part) -> torch.Tensor:
        return cast(TorchState, part).tensor

    def seed(self, seed: int) -> None:
        module = self.family.module
        generators = getattr(module, "default_generators", None)
        if generators is not None:
            generators[self.device].manual_seed(seed)
            return
        count = self.family.device_count()
        if count == 1 and hasattr(module, "manual_seed"):
            module.manual_seed(seed)
            return
        # Only a seed for all devices exists: the others get their states back.
        others = {i: module.get_rng_state(i) for i in range(count) if i != self.device}
        module.manual_seed_all(seed)
        for i, state in others.items():
            module.set_rng_state(state, i)

    def check_target(self, part: Part) -> None:
        check_device_type(cast(TorchState, part), self.family.device_type, self.name)


class _InitWatch:
    """Reports a block that initialized a backend whose fresh state cannot be recorded."""

    def __init__(self, family: ModuleDeviceFamily) -> None:
        self.family = family
        self.name = family.name

    def seed(self, seed: int) -> None:
        return None  # seeding would initialize the backend; the block starts it fresh

    def release(self) -> None:
        if self.family.available():
            warnings.warn(
                f"rng_fork: the block initialized {self.family.name}; its generators keep what the block drew "
                f"(torch offers no lazy record of their fresh state). Initialize {self.family.name} before the fork.",
                RngForkWarning,
                stacklevel=4,
            )


class _QueuedDevice(RngSource):
    """A device of an uninitialized runtime: a state loaded into it is queued for the initialization,
    as torch's own ``set_rng_state`` does. It can be loaded only: saving or seeding it would
    initialize the runtime."""

    def __init__(self, family: LazyDeviceFamily, device: int) -> None:
        self.name = f"{family.name}:{device}"
        self.codec = family.codec
        self.family = family
        self.device = device

    def identity(self) -> Hashable:
        return (self.family.name, self.device)

    def save(self) -> Any:
        raise TypeError(f"saving {self.name} would initialize its runtime")

    def load(self, saved: torch.Tensor) -> None:
        self.family.module.set_rng_state(saved, self.device)

    def saved_of(self, part: Part) -> torch.Tensor:
        return cast(TorchState, part).tensor

    def seed(self, seed: int) -> None:
        raise TypeError(f"seeding {self.name} alone would initialize its runtime")

    def check_target(self, part: Part) -> None:
        check_device_type(cast(TorchState, part), self.family.device_type, self.name)


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

    def __init__(self, name: str, module: Any, devices: Devices) -> None:
        self.name = name
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


def device_family(device_type: str, module: ModuleType | Any = None) -> RngFamily:
    """The family of every device of ``device_type``, chosen by what its torch module offers.

    ``module`` defaults to ``torch.<device_type>`` (the module a PrivateUse1
    backend registers). A module with torch.cuda's lazy machinery gets a
    :class:`LazyDeviceFamily`, one with only RNG functions a
    :class:`ModuleDeviceFamily`. CUDA, XPU, MTIA, MPS and a PrivateUse1 backend
    imported before rng_fork are registered at import; register others yourself.

    Example::

        import torch_npu   # a PrivateUse1 backend imported after rng_fork
        rng_fork.register_source(device_family("npu"))
    """
    if not isinstance(device_type, str) or not device_type:
        raise TypeError(f"device_type must be a non-empty str, not {device_type!r}")
    if module is None:
        module = getattr(torch, device_type, None)
        if module is None:
            raise ValueError(f"torch has no module for device type {device_type!r} (torch.{device_type})")
    if all(hasattr(module, attr) for attr in LazyDeviceFamily.REQUIRED):
        return LazyDeviceFamily(device_type, module)
    if all(hasattr(module, attr) for attr in ModuleDeviceFamily.REQUIRED):
        return ModuleDeviceFamily(device_type, module)
    missing = [attr for attr in ModuleDeviceFamily.REQUIRED if not hasattr(module, attr)]
    raise TypeError(f"the module for {device_type!r} has no {', '.join(missing)}: no generator to fork")
