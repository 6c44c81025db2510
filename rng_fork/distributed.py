"""RNG state across the ranks of a ``torch.distributed`` job.

Every function here is a **collective**: every rank of ``group`` must call it,
in the same order relative to the job's other collectives, or the job hangs.
``group`` goes to torch.distributed unchanged (``None``: the default group),
and "rank" below means the rank within ``group``.

``import rng_fork`` does not import this module; ``import rng_fork.distributed``
works with any torch build, and the functions raise ``RuntimeError`` when
torch.distributed is unavailable or not initialized.

Example, on every rank of a job started with ``torchrun``::

    import rng_fork.distributed as rd

    if rank == 0:
        with rng_fork.fork_rng():
            evaluate(model.module)          # rank 0 alone; training is unchanged
    sd = rd.rng_state_dict()                # every rank calls it
    if rank == 0:
        torch.save({"rng": sd, ...}, "ckpt.pt")
    ...
    rd.load_rng_state_dict(torch.load("ckpt.pt", weights_only=True)["rng"])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch.distributed as dist

from ._swap import live_sources, restore_all
from .errors import RngForkWarning, RngRestoreError
from .sources import Part, RngSource, current_devices, generator_sources
from .state import RngState, get_rng_state, resolve_targets

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

FORMAT = "rng_fork.distributed"
"""The ``"format"`` entry of :func:`rng_state_dict` output."""

VERSION = 1
"""The ``"version"`` entry of :func:`rng_state_dict` output."""

T = TypeVar("T")
Entries = list[tuple[RngSource, Part]]


@dataclass(frozen=True)
class RngSyncReport:
    """What :func:`check_rng_in_sync` found: true exactly when every rank has the same state.

    ``differing`` maps each source whose state is not the same everywhere to the
    ranks whose part differs from rank 0's; a source that one side lacks counts
    as differing. ``str(report)`` says it in words.

    Example::

        report = check_rng_in_sync()
        report.differing            # {'torch': (1,)}: rank 1's torch generator is not rank 0's
        assert report, str(report)
    """

    world_size: int
    differing: dict[str, tuple[int, ...]]

    @property
    def in_sync(self) -> bool:
        """Whether every source is the same on every rank."""
        return not self.differing

    def __bool__(self) -> bool:
        return self.in_sync

    def __str__(self) -> str:
        if self.in_sync:
            return f"RNG state is the same on all {self.world_size} rank(s)"
        detail = "; ".join(f"{name!r} on {_ranks(ranks)}" for name, ranks in self.differing.items())
        return f"RNG state differs from rank 0's (or the source is missing on one side): {detail}"


@dataclass(frozen=True)
class RngLoadReport:
    """What :func:`load_rng_state_dict` restored, the same on every rank.

    ``restored``: the ranks put back to their saved state. ``not_restored``:
    ranks of this group that have no saved entry; they keep their state.
    ``dropped``: saved entries that no rank of this group took. ``skipped``
    (``strict=False`` only): for each rank that skipped any, the parts of devices
    it does not have (a GPU job's checkpoint loaded on CPU ranks). ``complete`` is
    true when the world size was unchanged and every rank was restored whole.

    Example::

        report = load_rng_state_dict(sd, strict=False)   # saved with 2 ranks, loaded into 1
        report.restored, report.dropped                   # ((0,), (1,))
    """

    world_size: int
    saved_world_size: int
    restored: tuple[int, ...]
    not_restored: tuple[int, ...]
    dropped: tuple[int, ...]
    skipped: dict[int, tuple[str, ...]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether every rank was restored whole and every saved entry used."""
        return not self.not_restored and not self.dropped and not self.skipped

    def __str__(self) -> str:
        text = (
            f"RNG state saved by {self.saved_world_size} rank(s), loaded into {self.world_size}: "
            f"restored {_ranks(self.restored) if self.restored else 'no rank'}"
        )
        if self.not_restored:
            text += f"; {_ranks(self.not_restored)} had no saved state and kept their own"
        if self.dropped:
            text += f"; the saved state of {_ranks(self.dropped)} was not used"
        for rank, parts in self.skipped.items():
            text += f"; rank {rank} skipped {', '.join(parts)} (no such device there)"
        return text


def gather_rng_state(group: ProcessGroup | None = None, *, generators: Iterable[object] = ()) -> list[RngState]:
    """Every rank's :class:`~rng_fork.RngState`, indexed by rank; every rank receives the whole list.

    A collective: every rank of ``group`` must call it. ``generators`` are each
    rank's own objects, snapshotted as :func:`rng_fork.get_rng_state` does (pass
    the same kinds in the same order on every rank). Nothing is drawn or changed.

    Example::

        states = gather_rng_state()
        states[1].names               # ('python', 'numpy', 'torch') on every rank
    """
    _membership(group)
    return [state for state, _ in _gather_own("gather_rng_state", group, generators)]


def check_rng_in_sync(group: ProcessGroup | None = None, *, generators: Iterable[object] = ()) -> RngSyncReport:
    """Compare every rank's RNG state with rank 0's, source by source; for debugging.

    Returns an :class:`RngSyncReport` (true when all ranks agree) on every rank.
    A collective: every rank of ``group`` must call it. Useful where ranks are
    seeded alike and should draw alike, e.g. to find code that draws on one rank
    only. Devices are compared by role, not index: each rank's current device
    (``torch.cuda.set_device(local_rank)``) against rank 0's, reported under the
    device type's name (``'cuda'``); a rank's other devices are not compared.

    Example::

        report = check_rng_in_sync()
        if not report:
            print(report)   # RNG state differs from rank 0's ...: 'torch' on rank 1
    """
    _membership(group)
    gathered = _gather_own("check_rng_in_sync", group, generators)
    views = [
        {shared: state.part(name) for name, shared in _shared_names(state.names, current).items()}
        for state, current in gathered
    ]
    reference = views[0]
    differing: dict[str, tuple[int, ...]] = {}
    for name in dict.fromkeys(name for view in views for name in view):
        # A sentinel, not None: a registered source's part may itself be None.
        wanted = reference.get(name, _MISSING)
        ranks = tuple(r for r, view in enumerate(views) if view.get(name, _MISSING) != wanted)
        if ranks:
            differing[name] = ranks
    return RngSyncReport(world_size=len(views), differing=differing)


def broadcast_rng_state(
    src: int = 0,
    group: ProcessGroup | None = None,
    *,
    generators: Iterable[object] = (),
    strict: bool = True,
) -> None:
    """Put every rank on ``src``'s RNG streams: afterwards every rank draws what ``src`` draws.

    ``src`` is a global rank, as in ``torch.distributed.broadcast``. A collective:
    every rank of ``group`` must call it. Each rank validates ``src``'s state
    against its own sources first (``strict`` as in :func:`rng_fork.set_rng_state`);
    if any rank cannot take it, every rank raises ``ValueError`` and none changes.
    ``generators`` are each rank's own objects; ``src``'s states go into them.

    Devices follow their role: ``src``'s current device's state goes into each
    rank's current device, so with one GPU per rank, rank 1's ``cuda:1`` takes
    rank 0's ``cuda:0``; a rank's other devices keep their states.

    Example::

        rng_fork.seed_all(1234 + rank)      # per-rank streams for data augmentation ...
        ...
        broadcast_rng_state(src=0)         # ... then one shared stream from here on
        assert check_rng_in_sync()
    """
    _membership(group)
    members = dist.get_process_group_ranks(group)
    if src not in members:
        raise ValueError(f"src={src} is not a rank of the group (its global ranks are {members})")
    is_src = dist.get_rank() == src
    box: list[object] = [None]
    if is_src:
        own, failure = _attempt(lambda: _own_state(generators))
        # A failure is sent instead of a state, so that no rank waits for one forever.
        box[0] = own if failure is None else failure
    dist.broadcast_object_list(box, src=src, group=group)
    sent = box[0]
    if isinstance(sent, str):
        _raise_if_any([], "broadcast_rng_state", [f"rank {src}: {sent}"])

    def prepare() -> Entries | None:
        # src already has the state; restoring it there would only repeat it.
        if is_src:
            return None
        if not (isinstance(sent, tuple) and len(sent) == 2 and isinstance(sent[0], RngState)):
            raise TypeError(f"rank {src} sent {type(sent).__name__}, not an RngState")
        state, theirs = sent
        mine = current_devices()
        # src's current device goes to this rank's own (or, where it has none, to the same index).
        targets = {name: mine.get(shared, name) for name, shared in _shared_names(state.names, theirs).items()}
        # Strictness asks for what this rank draws from: its other devices need no part.
        expected = list(_shared_names([source.name for source in live_sources(None)], mine))
        return resolve_targets(
            state._renamed(targets), generator_sources(generators), strict=strict, expected=expected
        ).entries

    entries, error = _attempt(prepare)
    _raise_if_any(_all_gather(error, group), "broadcast_rng_state")
    _restore_agreed(entries, group)


def _shared_names(names: Iterable[str], current: Mapping[str, str]) -> dict[str, str]:
    """Which of a rank's part ``names`` it draws from, each under a name every rank shares.

    Sources and generator objects keep their names. Of a device type with a
    current device (``current``, as :func:`~rng_fork.sources.current_devices`
    gives), that device's part goes under the type's name and the others are left
    out: rank 0's ``cuda:0`` and rank 1's ``cuda:1`` are both ``"cuda"``.
    """
    shared: dict[str, str] = {}
    for name in names:
        family = name.partition(":")[0]
        if family not in current:
            shared[name] = name
        elif name == current[family]:
            shared[name] = family
    return shared


def rng_state_dict(group: ProcessGroup | None = None, *, generators: Iterable[object] = ()) -> dict[str, Any]:
    """A checkpoint entry holding every rank's RNG state; every rank receives the whole dict.

    It holds only tensors, ints, strings, lists and dicts (``torch.load(...,
    weights_only=True)`` reads it back): ``{"format": "rng_fork.distributed",
    "version": 1, "world_size": N, "ranks": [rank 0's state_dict(), ...]}``. So
    rank 0 alone can save it. A collective: every rank of ``group`` must call it.

    Example::

        sd = rng_state_dict()
        if dist.get_rank() == 0:
            torch.save({"model": model.state_dict(), "rng": sd}, "ckpt.pt")
    """
    _membership(group)
    states = [state for state, _ in _gather_own("rng_state_dict", group, generators)]
    return {"format": FORMAT, "version": VERSION, "world_size": len(states), "ranks": [s.state_dict() for s in states]}


def load_rng_state_dict(
    state_dict: Mapping[str, Any],
    strict: bool = True,
    group: ProcessGroup | None = None,
    *,
    generators: Iterable[object] = (),
) -> RngLoadReport:
    """Restore every rank from its own entry of :func:`rng_state_dict` output.

    A collective: every rank of ``group`` must call it. All or nothing: every
    rank first validates its entry (as :func:`rng_fork.set_rng_state` does) and
    the ranks exchange the outcome; if any rank's check fails, every rank raises
    ``ValueError`` naming the ranks and reasons, and no rank changes.

    When the world size differs from the saved one, ``strict=True`` raises that
    way on every rank. ``strict=False`` restores the ranks both have, leaves the
    others as they are, warns, and reports them; as ``set_rng_state(strict=False)``
    does, it also lets an entry lack some of a rank's sources and skips (and
    reports) the parts of devices a rank does not have. If restoring
    itself fails on a rank (after validation), every rank raises
    :class:`~rng_fork.RngRestoreError`, and ranks that succeeded stay restored.

    Returns an :class:`RngLoadReport`, the same on every rank.

    Example::

        ckpt = torch.load("ckpt.pt", weights_only=True)
        report = load_rng_state_dict(ckpt["rng"], strict=False)
        if not report.complete:
            print(report)    # ... the saved state of rank 1 was not used
    """
    rank, size = _membership(group)
    saved_size: int | None = None
    skipped: tuple[str, ...] = ()

    def prepare() -> Entries | None:
        nonlocal saved_size, skipped
        saved_size, saved = _unpack(state_dict)
        if rank >= saved_size:
            return None
        targets = resolve_targets(RngState.from_state_dict(saved[rank]), generator_sources(generators), strict=strict)
        skipped = targets.skipped
        return targets.entries

    entries, error = _attempt(prepare)
    outcomes = _all_gather((error, saved_size, skipped), group)
    sizes = sorted({s for _, s, _ in outcomes if s is not None})
    problems: list[str] = []
    if len(sizes) > 1:
        problems.append(f"the ranks were given state dicts of different world sizes ({sizes})")
    elif sizes and sizes[0] != size and strict:
        problems.append(
            f"the state dict was saved by {sizes[0]} rank(s) and this group has {size}; "
            "pass strict=False to restore only the ranks both have"
        )
    _raise_if_any([e for e, _, _ in outcomes], "load_rng_state_dict", problems)
    saved_world_size = sizes[0]
    _restore_agreed(entries, group)
    both = min(size, saved_world_size)
    report = RngLoadReport(
        world_size=size,
        saved_world_size=saved_world_size,
        restored=tuple(range(both)),
        not_restored=tuple(range(both, size)),
        dropped=tuple(range(both, saved_world_size)),
        skipped={r: parts for r, (_, _, parts) in enumerate(outcomes) if parts},
    )
    if not report.complete:
        warnings.warn(str(report), RngForkWarning, stacklevel=2)
    return report


def _membership(group: ProcessGroup | None) -> tuple[int, int]:
    """This process's rank in ``group`` and the group's size; raises if there is no usable group."""
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    if not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialized: call torch.distributed.init_process_group() on every rank first"
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("this process is not a member of the group; only its members take part in its collectives")
    return rank, dist.get_world_size(group)


def _own_state(generators: Iterable[object]) -> tuple[RngState, dict[str, str]]:
    """This rank's state and the part names of its current devices."""
    return get_rng_state(generators=generators), current_devices()


def _gather_own(
    what: str, group: ProcessGroup | None, generators: Iterable[object]
) -> list[tuple[RngState, dict[str, str]]]:
    """Every rank's :func:`_own_state`; if any rank cannot take its own, every rank raises."""
    own, failure = _attempt(lambda: _own_state(generators))
    gathered = _all_gather((own, failure), group)
    _raise_if_any([error for _, error in gathered], what, outcome="read no state")
    return [state for state, _ in gathered if state is not None]


def _all_gather(obj: T, group: ProcessGroup | None) -> list[T]:
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, obj, group=group)
    return gathered


def _attempt(prepare: Callable[[], T]) -> tuple[T | None, str | None]:
    """Run a rank's own step, turning any failure into a message for the other ranks."""
    try:
        return prepare(), None
    except Exception as exc:  # noqa: BLE001 - a rank that raised here alone would leave the others hanging
        return None, f"{type(exc).__name__}: {exc}"


def _raise_if_any(
    errors: Sequence[str | None], what: str, problems: Sequence[str] = (), *, outcome: str = "changed nothing"
) -> None:
    """Raise the same ``ValueError`` on every rank if any rank failed or a shared check did."""
    failed = [*problems, *(f"rank {r}: {error}" for r, error in enumerate(errors) if error is not None)]
    if failed:
        raise ValueError(f"{what} {outcome} on any rank: {'; '.join(failed)}")


def _restore_agreed(entries: Entries | None, group: ProcessGroup | None) -> None:
    """Restore this rank's entries, then raise on every rank if any rank's restore failed."""
    failure: RngRestoreError | None = None
    if entries:
        try:
            restore_all(entries)
        except RngRestoreError as exc:
            failure = exc
    # Every rank learns of a failure anywhere, so none walks on into its next collective alone.
    reports = _all_gather(None if failure is None else str(failure), group)
    if failure is not None:
        raise failure
    failed = {f"rank {r}": RuntimeError(report) for r, report in enumerate(reports) if report is not None}
    if failed:
        raise RngRestoreError(failed)


def _unpack(state_dict: object) -> tuple[int, Sequence[Any]]:
    """The saved world size and per-rank entries of :func:`rng_state_dict` output, checked."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"expected the dict rng_state_dict() returns, not {type(state_dict).__name__}")
    if state_dict.get("format") != FORMAT:
        raise ValueError(
            f"not a state dict from rng_fork.distributed.rng_state_dict() (no 'format': {FORMAT!r} entry); "
            "one process's RngState.state_dict() goes back through rng_fork.set_rng_state"
        )
    version = state_dict.get("version")
    if version != VERSION:
        raise ValueError(f"unsupported rng_state_dict version {version!r} (this rng_fork reads {VERSION})")
    size = state_dict.get("world_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"'world_size' must be a positive int, got {size!r}")
    ranks = state_dict.get("ranks")
    if not isinstance(ranks, (list, tuple)) or len(ranks) != size:
        raise ValueError(f"'ranks' must be a list of {size} per-rank state dicts")
    return size, ranks


_MISSING = object()


def _ranks(ranks: Sequence[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"


__all__ = [
    "RngLoadReport",
    "RngSyncReport",
    "broadcast_rng_state",
    "check_rng_in_sync",
    "gather_rng_state",
    "load_rng_state_dict",
    "rng_state_dict",
]
