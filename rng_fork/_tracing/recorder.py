"""One open trace: every watched source's state at the last checkpoint, and the events that explain each change.

A *checkpoint* saves every watched source (through the savers forks use) and
compares it with the previous checkpoint. A change is explained by the call
or op that was pending since then (``draw`` or ``reseed``); any other change
becomes one ``unattributed`` event, placed between the previous event's site
and this checkpoint's. Checkpoints are taken before and after every torch op
that draws, before every call of a watched generator's method, after it
returns where the hook sees the return, and when the trace ends: so every
change of a watched source is named by at least one event.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._swap import SourceSet, plan_for
from ..sources import RngSource, TorchState
from .frames import Site


@dataclass(frozen=True)
class Event:
    """What the recorder found; :class:`rng_fork.RngEvent` is made from it."""

    source: str
    kind: str
    op: str
    site: Site
    after: Site | None = None


SiteLike = Site | Callable[[], Site]


@dataclass
class Pending:
    """A call or op that may change sources; the next checkpoint names each change it made."""

    kind: str
    op: str
    site: SiteLike
    objects: frozenset[int] | None = None
    """The ``id``s of the generator objects it can change (None: any source)."""


def _resolved(site: SiteLike) -> Site:
    return site if isinstance(site, Site) else site()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    # Read straight from memory: Tensor.numpy() dispatches an op (detach), which the trace's own mode
    # would see. A state is a contiguous CPU uint8 tensor.
    return ctypes.string_at(tensor.data_ptr(), tensor.numel())


def _comparable(value: Any) -> Any:
    # torch generators hand out state tensors, which compare elementwise: their bytes compare as a whole.
    if isinstance(value, torch.Tensor):
        return _tensor_bytes(value)
    if isinstance(value, TorchState):
        return value.device_type, _tensor_bytes(value.tensor)
    return value


def _object_of(source: RngSource) -> object | None:
    return getattr(source, "obj", None)


class Watched:
    """The sources one recorder compares: the registered ones live now, then its ``generators=``."""

    def __init__(self, extra: Sequence[RngSource]) -> None:
        self._extra = SourceSet(extra)
        self._plan: object = None
        self.refresh()

    def refresh(self) -> None:
        """Follow the registry and the runtimes (a CUDA initialization adds devices)."""
        plan = plan_for(None)
        if plan is self._plan:
            return
        self._plan = plan
        joined = plan.sources + self._extra
        self.sources = joined.sources
        self._saves = joined.saves
        self._parts: list[Callable[[Any], Any]] = [source.part_of for source in joined.sources]
        self.names = [source.name for source in joined.sources]
        # Which source each generator object is, for calls of its methods.
        self.by_object: dict[int, str] = {}
        for source in joined.sources:
            obj = _object_of(source)
            if obj is not None:
                self.by_object.setdefault(id(obj), source.name)

    def objects(self) -> list[object]:
        """The generator objects behind the sources (for hooks that watch their methods)."""
        return [obj for obj in map(_object_of, self.sources) if obj is not None]

    def save(self) -> dict[str, Any]:
        """Every source's state now, as values that compare with ``==``."""
        self.refresh()
        states: dict[str, Any] = {}
        for name, save, part in zip(self.names, self._saves, self._parts, strict=True):
            saved = save()
            states[name] = _tensor_bytes(saved) if isinstance(saved, torch.Tensor) else _comparable(part(saved))
        return states


class Recorder:
    """The events of one open trace.

    Example::

        recorder = Recorder((), start_site)
        recorder.checkpoint(site)                       # explains every change since the last one
        recorder.start(Pending("draw", "rand", site))   # the next checkpoint names what it changed
    """

    def __init__(self, extra: Sequence[RngSource], start: Site, aliases: Iterable[tuple[int, int]] = ()) -> None:
        self.watched = Watched(extra)
        self.events: list[Event] = []
        self._aliases = dict(aliases)  # id(numpy Generator) -> id(its bit generator)
        self._last = self.watched.save()
        self._pending: Pending | None = None
        self._previous = start

    def name_of(self, obj_id: int) -> str | None:
        """The source name of a watched generator object, by ``id``."""
        return self.watched.by_object.get(self._aliases.get(obj_id, obj_id))

    def aliases(self) -> list[int]:
        """``id``s of objects whose calls change a watched source (a NumPy ``Generator``'s bit generator)."""
        return list(self._aliases)

    @property
    def pending(self) -> Pending | None:
        """The call whose changes the next checkpoint names, if any."""
        return self._pending

    def start(self, pending: Pending) -> None:
        """Checkpoint, then let ``pending`` explain what changes until the next one."""
        self.checkpoint(pending.site)
        self._pending = pending

    def start_and_settle(self, pending: Pending) -> None:
        """Name every change since the last checkpoint after ``pending`` (which just ran)."""
        self._pending = pending
        self.checkpoint(pending.site)

    def checkpoint(self, here: SiteLike) -> None:
        """Compare every source with the last checkpoint and record an event for each change."""
        now = self.watched.save()
        last = self._last
        pending, self._pending = self._pending, None
        previous = self._previous  # every unexplained change found now happened after it
        where: Site | None = None
        for name, value in now.items():
            # A source first seen now (a device initialized meanwhile) starts here.
            if name not in last or last[name] == value:
                continue
            if pending is not None and (pending.objects is None or name in self._names(pending.objects)):
                pending.site = _resolved(pending.site)
                self._add(Event(name, pending.kind, pending.op, pending.site))
            else:
                if where is None:
                    where = _resolved(here)
                self._add(Event(name, "unattributed", "", where, previous))
        self._last = now

    def _names(self, objects: frozenset[int]) -> set[str]:
        return {name for name in map(self.name_of, objects) if name is not None}

    def _add(self, event: Event) -> None:
        self.events.append(event)
        self._previous = event.site
