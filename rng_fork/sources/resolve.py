"""``generators=``: the generator objects behind what a user passes, and a source for each.

Accepted are the generators themselves (``torch.Generator``, ``numpy.random.Generator``,
``RandomState``, ``BitGenerator``, ``random.Random``) and what draws from them
(a ``DataLoader``, a ``Sampler``), always in a list: a lone loader or sampler is
refused before it is iterated, since iterating it would draw.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from .base import RngSource
from .bit_generators import BitGeneratorSource
from .devices import DeviceGeneratorSource
from .numpy_legacy import RandomStateSource
from .python import ObjectSource, python_source
from .torch_generators import TorchGeneratorSource

GENERATOR_PREFIX = "generator"


def _generator_objects(obj: object) -> list[object]:
    """The generator objects behind one entry of ``generators=``."""
    if isinstance(obj, random.SystemRandom):
        raise TypeError("random.SystemRandom has no state to fork")
    if isinstance(obj, (random.Random, np.random.RandomState, np.random.BitGenerator, torch.Generator)):
        return [obj]
    if isinstance(obj, np.random.Generator):
        return [obj.bit_generator]
    if isinstance(obj, torch.utils.data.DataLoader):
        # A loader draws from its own generator (the worker base seed) and from
        # its sampler's (the shuffle order); usually they are the same object.
        # Its samplers may be any iterable (a list of indices): only generators count.
        found = [obj.generator, *_sampler_generators(obj.sampler), *_sampler_generators(obj.batch_sampler)]
        return [g for generator in found if generator is not None for g in _generator_objects(generator)]
    if isinstance(obj, torch.utils.data.Sampler):
        return [g for generator in _sampler_generators(obj) for g in _generator_objects(generator)]
    raise TypeError(_UNSUPPORTED.format(type(obj).__qualname__))


def _sampler_generators(sampler: object) -> list[object]:
    """The generators a sampler draws from: its own, or that of the sampler it batches.

    A custom sampler's generator of a kind not supported here is then an error,
    not silently skipped.
    """
    found = [getattr(sampler, "generator", None), getattr(getattr(sampler, "sampler", None), "generator", None)]
    return [generator for generator in found if generator is not None]


_UNSUPPORTED = (
    "generators= takes torch.Generator, numpy.random.Generator, numpy.random.RandomState, "
    "numpy.random.BitGenerator, random.Random, a torch.utils.data.DataLoader or Sampler, not {}"
)


_SINGLE = (
    torch.utils.data.DataLoader,
    torch.utils.data.Sampler,
    torch.Generator,
    np.random.Generator,
    np.random.RandomState,
    np.random.BitGenerator,
    random.Random,
)


_BARE = frozenset({
    random.Random, np.random.RandomState, torch.Generator,
    np.random.MT19937, np.random.PCG64, np.random.PCG64DXSM, np.random.Philox, np.random.SFC64,
})
"""Types that are their own generator object, exactly (a subclass goes the long way)."""


def generator_objects(generators: object) -> list[object]:
    """The distinct generator objects behind ``generators=``, in order of first appearance.

    Raises ``TypeError`` for anything that is not a list (or other iterable) of
    supported objects; a lone loader or sampler is refused before it is iterated.
    """
    # The usual case, a list of generators themselves, without the checks below (built per fork).
    if type(generators) is list or type(generators) is tuple:
        for entry in generators:
            if type(entry) not in _BARE:
                break
        else:
            return list(generators) if len(generators) < 2 else list({id(g): g for g in generators}.values())
    # Checked before iterating: a loader, a sampler or a dataset may draw from the very generators to protect.
    if isinstance(generators, _SINGLE):
        raise TypeError(
            f"generators= takes a list of objects, not one {type(generators).__qualname__}: "
            "pass generators=[...] around it"
        )
    if isinstance(generators, torch.utils.data.Dataset):
        raise TypeError(_UNSUPPORTED.format(type(generators).__qualname__))
    if isinstance(generators, (str, bytes)) or not hasattr(generators, "__iter__"):
        raise TypeError(f"generators= must be an iterable of generators, not {type(generators).__name__}")
    seen: dict[int, object] = {}
    for entry in generators:
        for obj in _generator_objects(entry):
            seen.setdefault(id(obj), obj)
    return list(seen.values())


def generator_sources(generators: object) -> tuple[RngSource, ...]:
    """Sources for the objects of ``generators=``, named ``generator:0``, ``generator:1``, ...

    Each distinct generator gets one source, in order of first appearance, so
    the same list always yields the same names.
    """
    return sources_of(generator_objects(generators))


def sources_of(objects: list[object]) -> tuple[RngSource, ...]:
    """Sources for the distinct generator objects :func:`generator_objects` found, named by position."""
    return tuple(_source_for(f"{GENERATOR_PREFIX}:{i}", obj) for i, obj in enumerate(objects))


def objects_of(sources: tuple[RngSource, ...]) -> tuple[object, ...]:
    """The generator objects that :func:`sources_of` made ``sources`` for: what a copy of a
    fork or stream is rebuilt from, so that it forks the copies of its generators."""
    objects = []
    for source in sources:
        if not isinstance(source, ObjectSource):
            raise TypeError(f"{source!r} is not the source of a generator object")
        objects.append(source.obj)
    return tuple(objects)


def _source_for(name: str, obj: object) -> RngSource:
    if isinstance(obj, random.Random):
        return python_source(name, obj)
    if isinstance(obj, np.random.RandomState):
        return RandomStateSource(name, obj)
    if isinstance(obj, np.random.BitGenerator):
        return BitGeneratorSource(name, obj)
    assert isinstance(obj, torch.Generator)
    if obj.device.type == "cpu":
        return TorchGeneratorSource(name, obj)
    return DeviceGeneratorSource(name, obj)  # may be part of a CUDA graph being captured
