"""Immutable snapshots of every RNG source, and their checkpoint form."""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._checks import check_seed, short_repr
from ._swap import NO_SOURCES, SourceSet, extra_sources, live_sources, plan_for, restore_all, snapshot_parts
from .errors import RngForkWarning
from .sources import (
    GENERATOR_PREFIX,
    Part,
    RngSource,
    codec_for,
    generator_sources,
    is_device_part,
    registered_families,
    source_family,
)


def _named(name: str, exc: Exception) -> Exception:
    """The same kind of error, with the source it concerns named first."""
    renamed = type(exc)(f"RNG source {name!r}: {exc}")
    renamed.__cause__ = exc.__cause__
    return renamed


class RngState:
    """An immutable snapshot of every RNG source, keyed by source name.

    Names are ``"python"``, ``"numpy"``, ``"torch"``, ``"cuda:0"``, ... and
    ``"generator:0"``, ... for objects passed as ``generators=``. Snapshots
    compare with ``==``, hash and pickle; :meth:`state_dict` gives plain data
    for checkpoints that ``torch.load(..., weights_only=True)`` reads back.

    Example::

        state = rng_fork.get_rng_state()
        torch.save({"rng": state.state_dict()}, "ckpt.pt")
        ...
        rng_fork.set_rng_state(torch.load("ckpt.pt", weights_only=True)["rng"])
    """

    __slots__ = ("_parts",)
    _parts: dict[str, tuple[str, Part]]

    def __init__(self, parts: Mapping[str, tuple[str, Part]]) -> None:
        checked: dict[str, tuple[str, Part]] = {}
        for name, entry in parts.items():
            if not isinstance(name, str):
                raise TypeError(f"RNG source names are strings, not {type(name).__name__}")
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise TypeError(f"RNG source {name!r}: expected a (type, state) pair")
            tag, part = entry
            codec = codec_for(tag) if isinstance(tag, str) else None
            if codec is None:
                raise ValueError(f"RNG source {name!r}: unknown state type {short_repr(tag)}")
            try:
                checked[name] = (tag, codec.check(part))
            except (TypeError, ValueError) as exc:
                raise _named(name, exc) from None
        object.__setattr__(self, "_parts", checked)

    @classmethod
    def _trusted(cls, parts: dict[str, tuple[str, Part]]) -> RngState:
        state = object.__new__(cls)
        object.__setattr__(state, "_parts", parts)
        return state

    def _renamed(self, names: Mapping[str, str]) -> RngState:
        """The parts named by the keys of ``names``, each under its value."""
        return RngState._trusted({new: self._parts[old] for old, new in names.items()})

    @property
    def names(self) -> tuple[str, ...]:
        """The sources this snapshot holds, in capture order."""
        return tuple(self._parts)

    def part(self, name: str) -> Part:
        """The raw captured state of one source (its codec's format)."""
        return self._parts[name][1]

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("RngState is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RngState):
            return NotImplemented
        return self._parts == other._parts

    def __hash__(self) -> int:
        return hash(tuple(self._parts.items()))

    def __repr__(self) -> str:
        return f"RngState({', '.join(self._parts)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (RngState, (self._parts,))

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Plain checkpoint data: ``{name: {"type": tag, ...}}``.

        It holds only tensors, ints, floats, bools, strings, lists and dicts, so
        ``torch.load(..., weights_only=True)`` reads a saved one back.

        Example::

            sd = rng_fork.get_rng_state().state_dict()
            sorted(sd)   # ['numpy', 'python', 'torch']
        """
        result: dict[str, dict[str, Any]] = {}
        for name, (tag, part) in self._parts.items():
            codec = codec_for(tag)
            assert codec is not None  # checked when the snapshot was made
            result[name] = {"type": tag, **codec.to_plain(part)}
        return result

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any]) -> RngState:
        """Rebuild a snapshot from :meth:`state_dict` output, validating every part.

        Raises ``TypeError`` or ``ValueError`` naming the source for anything malformed.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"an RNG state dict must be a mapping, not {type(state_dict).__name__}")
        parts: dict[str, tuple[str, Part]] = {}
        for name, plain in state_dict.items():
            if not isinstance(name, str):
                raise TypeError(f"RNG source names are strings, not {type(name).__name__}")
            if not isinstance(plain, Mapping):
                raise TypeError(f"RNG source {name!r}: expected a dict, not {type(plain).__name__}")
            tag = plain.get("type")
            codec = codec_for(tag) if isinstance(tag, str) else None
            if codec is None:
                raise ValueError(f"RNG source {name!r}: unknown state type {short_repr(tag)}")
            try:
                parts[name] = (codec.tag, codec.from_plain(plain))
            except (TypeError, ValueError) as exc:
                raise _named(name, exc) from None
        return cls._trusted(parts)


def get_rng_state(*, generators: Iterable[object] = ()) -> RngState:
    """Snapshot every default RNG source, plus the objects in ``generators``.

    Default sources: every registered one (see :func:`rng_fork.info`): Python's
    ``random``, NumPy's legacy global generator, torch's CPU generator and,
    only while their runtime is initialized, every device of each accelerator
    type (CUDA, XPU, MTIA, MPS, ...). Capturing never initializes a runtime.

    Example::

        state = rng_fork.get_rng_state()
        a = torch.rand(3)
        rng_fork.set_rng_state(state)
        assert torch.equal(torch.rand(3), a)
    """
    return snapshot(extra_sources(generators))


def snapshot(extra: SourceSet = NO_SOURCES) -> RngState:
    """:func:`get_rng_state` for ``generators=`` already resolved (as blocks keep them)."""
    parts = snapshot_parts(None, extra)
    return RngState._trusted({source.name: (source.codec.tag, part) for source, part in parts})


@dataclass(frozen=True)
class RestoreReport:
    """What :func:`set_rng_state` (or a stream's ``load_state_dict``) put back.

    ``restored``: the parts put back. With ``strict=False`` only: ``skipped``, the
    parts of devices this process does not have (a checkpoint from a GPU machine
    loaded on a CPU one), and ``missing``, the live sources the state had no part
    for; both keep their states. ``complete`` is true when neither has any.

    Example::

        report = rng_fork.set_rng_state(checkpoint["rng"], strict=False)
        report.skipped          # ('cuda:0',) on a machine without CUDA
    """

    restored: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether every part was put back and every live source had one."""
        return not self.skipped and not self.missing

    def __str__(self) -> str:
        text = f"restored {', '.join(self.restored) or 'nothing'}"
        if self.skipped:
            text += f"; skipped {', '.join(self.skipped)} (no such device in this process)"
        if self.missing:
            text += f"; the state has no part for {', '.join(self.missing)}, which kept their states"
        return text


def set_rng_state(
    state: RngState | Mapping[str, Any], *, generators: Iterable[object] = (), strict: bool = True
) -> RestoreReport:
    """Put every source back to ``state`` (an :class:`RngState` or its ``state_dict()``).

    Every part is validated before any generator changes: a wrong type, a wrong
    length, an unknown source or (with ``strict``) a missing one raises
    ``TypeError`` or ``ValueError`` naming the source, and nothing is touched.
    Parts named ``generator:N`` go into the objects passed as ``generators=``,
    matched in the order :func:`get_rng_state` named them. A CUDA part restored
    while CUDA is not initialized is queued for its initialization, as
    ``torch.cuda.set_rng_state`` does.

    With ``strict=False``, parts of devices this process does not have (``cuda:0``
    on a machine without CUDA, ``cuda:3`` on one with two GPUs) are skipped with
    an :class:`~rng_fork.RngForkWarning`, and sources the state has no part for
    keep their states; ``strict=True`` refuses both. Returns a :class:`RestoreReport`.

    Example::

        rng_fork.set_rng_state(checkpoint["rng"], generators=[loader])
    """
    if isinstance(state, Mapping):
        state = RngState.from_state_dict(state)
    elif not isinstance(state, RngState):
        raise TypeError(f"set_rng_state takes an RngState or its state_dict(), not {type(state).__name__}")
    targets = resolve_targets(state, generator_sources(generators), strict=strict)
    restore_all(targets.entries)
    return targets.report(warn_from=2)


@dataclass(frozen=True)
class Targets:
    """The parts of a snapshot paired with the live sources they go into."""

    entries: list[tuple[RngSource, Part]]
    skipped: tuple[str, ...]
    missing: tuple[str, ...]

    def report(self, *, warn_from: int) -> RestoreReport:
        """The report of restoring :attr:`entries`; warns of skipped parts, ``warn_from`` frames below the user."""
        report = RestoreReport(tuple(source.name for source, _ in self.entries), self.skipped, self.missing)
        if self.skipped:
            warnings.warn(f"rng_fork: {report}", RngForkWarning, stacklevel=warn_from + 1)
        return report


def resolve_targets(
    state: RngState, generators: Iterable[RngSource], *, strict: bool, expected: Iterable[str] | None = None
) -> Targets:
    """Pair each part of ``state`` with the live source it goes into, validating all of them.

    Raises ``TypeError``/``ValueError`` naming the source for a part that has no
    target, does not fit its target or (with ``strict``) is missing. Without
    ``strict``, parts of devices this process lacks are skipped instead.
    ``expected`` names the sources ``strict`` requires, if not every live one.
    """
    extra = {source.name: source for source in generators}
    entries: list[tuple[RngSource, Part]] = []
    skipped: list[str] = []
    for name, (tag, part) in state._parts.items():
        target = _target(name, extra, strict=strict)
        if target is None:
            skipped.append(name)
            continue
        if target.codec.tag != tag:
            raise ValueError(f"RNG source {name!r}: a {tag} state cannot go into it (it takes {target.codec.tag})")
        try:
            target.check_target(part)
        except (TypeError, ValueError) as exc:
            raise _named(name, exc) from None
        entries.append((target, part))
    required = [s.name for s in live_sources(None)] if expected is None else list(expected)
    missing = [name for name in [*required, *extra] if name not in state._parts]
    if strict and missing:
        raise ValueError(
            f"the state has no part for RNG source(s) {', '.join(map(repr, missing))}; "
            "pass strict=False to restore only the parts it has"
        )
    return Targets(entries, tuple(skipped), tuple(missing))


def absent_device(name: str) -> bool:
    """Whether ``name`` is a part of a device this process does not have (``cuda:0`` without CUDA)."""
    family = source_family(name)
    return is_device_part(name) and (family is None or family.resolve(name) is None)


def _target(name: str, extra: Mapping[str, RngSource], *, strict: bool) -> RngSource | None:
    """The source a part named ``name`` goes into; None for a device this process lacks, without ``strict``."""
    if name.partition(":")[0] == GENERATOR_PREFIX:
        if name not in extra:
            raise ValueError(
                f"RNG source {name!r} is a generator object: pass it (in the same order) as generators="
            )
        return extra[name]
    family = source_family(name)
    target = family.resolve(name) if family is not None else None
    if target is None:
        if is_device_part(name):
            if not strict:
                return None
            raise ValueError(
                f"RNG source {name!r} does not exist in this process (no such device); "
                "pass strict=False to skip the parts of devices it lacks"
            )
        raise ValueError(f"RNG source {name!r} does not exist in this process")
    return target


def seed_all(seed: int) -> None:
    """Seed every registered source (Python, NumPy, torch, every device of every type) from ``seed``.

    ``seed`` must be an int in ``[0, 2**32)``. CUDA, XPU and MTIA are seeded
    lazily if they are not initialized, as ``torch.manual_seed`` does. If a
    source cannot be seeded, the others still are, and a ``RuntimeError`` names
    it; during a CUDA graph capture it raises before seeding anything.

    Example::

        rng_fork.seed_all(0)
    """
    checked = check_seed(seed, allow_none=False)
    assert checked is not None
    plan_for(None).sources.check_not_graph_capturing()  # refused before anything is seeded
    seed_families(checked, caller="seed_all")


def seed_families(seed: int, *, caller: str, skip: Collection[str] = ()) -> None:
    """Seed every registered family but those named in ``skip``; a failure leaves the others seeded
    and is named, with ``caller``, in one ``RuntimeError`` at the end."""
    failed: list[str] = []
    for family in registered_families():
        if family.name in skip:
            continue
        try:
            family.seed(seed)
        except Exception as exc:  # noqa: BLE001 - the others are still seeded; all failures are named below
            failed.append(f"{family.name}: {type(exc).__name__}: {exc}")
    if failed:
        raise RuntimeError(f"{caller} seeded every other source but not {'; '.join(failed)}")


__all__ = ["RestoreReport", "RngState", "get_rng_state", "seed_all", "set_rng_state"]
