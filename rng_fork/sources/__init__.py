"""Adapters for every RNG family, and the registry that lists the default ones."""

from .base import Codec, LazyGuard, Part, PlainCodec, RngSource, Savers
from .devices import LazyDeviceSource, ModuleDeviceSource, device_source
from .objects import (
    BitGeneratorSource,
    PythonRandomSource,
    RandomStateSource,
    TorchGeneratorSource,
    generator_objects,
    generator_sources,
)
from .registry import (
    codec_for,
    current_devices,
    is_device_part,
    register_source,
    registered_sources,
    source_family,
    unregister_source,
)

__all__ = [
    "BitGeneratorSource",
    "Codec",
    "LazyDeviceSource",
    "LazyGuard",
    "ModuleDeviceSource",
    "Part",
    "PlainCodec",
    "PythonRandomSource",
    "RandomStateSource",
    "RngSource",
    "Savers",
    "TorchGeneratorSource",
    "codec_for",
    "current_devices",
    "device_source",
    "generator_objects",
    "generator_sources",
    "is_device_part",
    "register_source",
    "registered_sources",
    "source_family",
    "unregister_source",
]
