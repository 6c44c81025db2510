"""Stand-in accelerator devices on the CPU, to measure how a fork scales with the device count.

The stand-in is the test suite's lazy backend (``tests/fakebackend``: torch.cuda's
lazy machinery over CPU generators), initialized, with torch.cuda's
``get_rng_state(device)`` added. Both forks see it as they see CUDA:

- torch's ``fork_rng(device_type="privateuseone")`` finds it as
  ``torch.privateuseone`` (registered once per process; rng_fork never
  registers that name itself, and it changes nothing for CUDA);
- rng_fork forks it as a :class:`~rng_fork.sources.LazyDeviceFamily`, the family
  CUDA gets, registered only while a row runs (see :func:`registered`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

import rng_fork
from rng_fork.sources import LazyDeviceFamily
from tests.fakebackend import FakeLazyBackend

DEVICE_TYPE = "privateuseone"
"""The device type torch's fork_rng is given for the stand-in."""

FAMILY = "standin"
"""The stand-in's name in rng_fork's registry."""


class StandInDevices(FakeLazyBackend):
    """Initialized stand-in devices; ``get_rng_state`` is torch.cuda's: initialize, read the generator."""

    __name__ = "benchmarks.standin"

    def get_rng_state(self, device: int = 0) -> torch.Tensor:
        self.init()
        return self.default_generators[device].get_state()


_DEVICES: StandInDevices | None = None


def devices(count: int) -> StandInDevices:
    """The process's stand-in backend (``count`` devices, initialized), registered with torch once."""
    global _DEVICES
    if _DEVICES is None:
        _DEVICES = StandInDevices(count=count)
        _DEVICES.init()
        torch._register_device_module(DEVICE_TYPE, _DEVICES)
    if _DEVICES.count != count:
        raise ValueError(f"the stand-in has {_DEVICES.count} devices, not {count}")
    return _DEVICES


@contextlib.contextmanager
def registered(backend: StandInDevices, warm_devices: range) -> Iterator[None]:
    """rng_fork forks the stand-in inside this block only: the other rows must not pay for it.

    One fork runs before the block, so a row's first timed fork does not pay
    for the plan that registering makes rng_fork work out again.
    """
    rng_fork.register_source(LazyDeviceFamily(FAMILY, backend, device_type="cpu"))
    try:
        with rng_fork.fork_rng(devices=warm_devices):
            pass
        yield
    finally:
        rng_fork.unregister_source(FAMILY)
