"""The registry of default sources, which third parties extend.

It holds families (:class:`~.base.RngFamily`); a plain source registers as the
family of one generator. Order matters only for reporting: generators are
saved and put back in registration order.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable

import numpy as np
import torch

from .base import Codec, OneGenerator, RngFamily, RngSource
from .bit_generators import BitGeneratorCodec
from .devices import LazyDeviceFamily, device_family
from .numpy_legacy import RandomStateSource
from .python import PythonRandomSource, RandomSubclassSource
from .resolve import GENERATOR_PREFIX
from .torch_generators import TorchGeneratorSource

Registered = RngSource | RngFamily
"""What :func:`register_source` takes: one generator, or a family of them."""

_lock = threading.Lock()
_registered: dict[str, Registered] = {}
_families: dict[str, RngFamily] = {}
# Kept as tuples, rebuilt on (rare) registration, so readers need no copy.
_ordered: tuple[Registered, ...] = ()
_ordered_families: tuple[RngFamily, ...] = ()


# Called after every change, so caches built from the registry can drop themselves.
_listeners: list[Callable[[], object]] = []


def on_change(listener: Callable[[], object]) -> None:
    """Call ``listener()`` after every registration and unregistration."""
    _listeners.append(listener)


def _refresh() -> None:
    global _ordered, _ordered_families
    _ordered = tuple(_registered.values())
    _ordered_families = tuple(_families.values())
    for listener in _listeners:
        listener()


_codecs: dict[str, Codec] = {codec.tag: codec for codec in (
    PythonRandomSource.codec,
    RandomSubclassSource.codec,
    RandomStateSource.codec,
    BitGeneratorCodec(),
    TorchGeneratorSource.codec,
)}


def register_source(source: Registered, *, replace: bool = False) -> Registered:
    """Add a generator (an :class:`~rng_fork.RngSource`) or a family of them (an
    :class:`~rng_fork.RngFamily`) to what every fork and snapshot covers; returns it.

    Its ``name`` keys its state in snapshots and must be unique (and free of
    ``":"``, which separates device indices); ``replace=True`` swaps out one
    of the same name. Its codec is registered by tag.

    Example::

        register_source(KeyHolderSource())
        with fork_rng():      # now also saves and restores the key holder
            ...
    """
    if isinstance(source, RngSource):
        family: RngFamily = OneGenerator(source)
    elif isinstance(source, RngFamily):
        family = source
    else:
        raise TypeError(f"register_source takes an RngSource or an RngFamily, not {type(source).__name__}")
    name = getattr(source, "name", None)
    if not isinstance(name, str) or not name or ":" in name or name == GENERATOR_PREFIX:
        raise ValueError(f"a source needs a non-empty name without ':' (and not {GENERATOR_PREFIX!r}), got {name!r}")
    codec = getattr(source, "codec", None)
    if not isinstance(codec, Codec):
        raise TypeError(f"source {name!r} needs a codec (an rng_fork.Codec), got {type(codec).__name__}")
    with _lock:
        if name in _registered and not replace:
            raise ValueError(f"a source named {name!r} is already registered; pass replace=True")
        known = _codecs.get(codec.tag)
        if known is not None and known is not codec and type(known) is not type(codec):
            raise ValueError(f"another codec already uses the tag {codec.tag!r}")
        _codecs.setdefault(codec.tag, codec)
        _registered[name] = source
        _families[name] = family
        _refresh()
    return source


def unregister_source(name: str) -> Registered:
    """Remove the source (or family) named ``name`` and return it; ``KeyError`` if there is none."""
    with _lock:
        try:
            source = _registered.pop(name)
        except KeyError:
            raise KeyError(f"no source named {name!r} is registered") from None
        del _families[name]
        _refresh()
        return source


def registered_sources() -> tuple[Registered, ...]:
    """The registered sources and families, as registered, in the order they are saved."""
    return _ordered


def registered_families() -> tuple[RngFamily, ...]:
    """The registered families (a plain source as its :class:`~.base.OneGenerator`), in order."""
    return _ordered_families


def codec_for(tag: str) -> Codec | None:
    """The codec registered under ``tag``, if any."""
    return _codecs.get(tag)


def current_devices() -> dict[str, str]:
    """Each device type's current device, as the part name it has in snapshots.

    Only types whose runtime is initialized and that can say which device is
    current: ``{"cuda": "cuda:1"}`` on the rank that called ``set_device(1)``.
    """
    found: dict[str, str] = {}
    for family in _ordered_families:
        index = family.current_device()
        if index is not None:
            found[family.name] = f"{family.name}:{index}"
    return found


def is_device_part(name: str) -> bool:
    """Whether a part name is one device of a device type (``"cuda:1"``), not a generator object's."""
    family, separator, _ = name.partition(":")
    return bool(separator) and family != GENERATOR_PREFIX


def source_family(name: str) -> RngFamily | None:
    """The registered family a part named ``name`` (``"cuda:1"`` -> ``"cuda"``) belongs to."""
    return _families.get(name.partition(":")[0])


register_source(PythonRandomSource("python", random._inst))
register_source(RandomStateSource("numpy", np.random.mtrand._rand))
register_source(TorchGeneratorSource("torch", torch.default_generator))


def _default_device_types() -> list[str]:
    # CUDA first, then the other backends torch.manual_seed seeds; a renamed
    # PrivateUse1 backend is found only if its package was imported before rng_fork.
    names = ["cuda", "xpu", "mtia", "mps"]
    custom = torch._C._get_privateuse1_backend_name()
    if custom not in names and custom != "privateuseone":
        names.append(custom)
    return names


register_source(LazyDeviceFamily("cuda", torch.cuda))
# The others capture nothing and guard nothing where the machine has none of their devices.
for _name in _default_device_types()[1:]:
    with contextlib.suppress(TypeError, ValueError):  # a build without such a module
        register_source(device_family(_name))
