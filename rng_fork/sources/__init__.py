"""Generator adapters (sources), the families that expand into them, and the registry.

Everything that knows a backend (Python's ``random``, NumPy, torch, the
accelerators) lives in this package and nowhere else.
"""

from .base import Codec, Devices, LazyGuard, OneGenerator, Part, PlainCodec, RngFamily, RngSource, Savers
from .bit_generators import BitGeneratorSource
from .devices import DeviceGeneratorSource, LazyDeviceFamily, ModuleDeviceFamily, device_family
from .numpy_legacy import RandomStateSource
from .python import PythonRandomSource, RandomSubclassSource
from .registry import (
    codec_for,
    current_devices,
    is_device_part,
    register_source,
    registered_families,
    registered_sources,
    source_family,
    unregister_source,
)
from .resolve import GENERATOR_PREFIX, generator_objects, generator_sources, objects_of, sources_of
from .torch_generators import TorchGeneratorSource, TorchState

__all__ = [
    "GENERATOR_PREFIX",
    "BitGeneratorSource",
    "Codec",
    "DeviceGeneratorSource",
    "Devices",
    "LazyDeviceFamily",
    "LazyGuard",
    "ModuleDeviceFamily",
    "OneGenerator",
    "Part",
    "PlainCodec",
    "PythonRandomSource",
    "RandomStateSource",
    "RandomSubclassSource",
    "RngFamily",
    "RngSource",
    "Savers",
    "TorchGeneratorSource",
    "TorchState",
    "codec_for",
    "current_devices",
    "device_family",
    "generator_objects",
    "generator_sources",
    "is_device_part",
    "objects_of",
    "register_source",
    "registered_families",
    "registered_sources",
    "source_family",
    "sources_of",
    "unregister_source",
]
