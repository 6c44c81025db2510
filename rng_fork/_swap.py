"""The one mechanism that saves and puts back generator states.

``fork_rng``, ``RngStream``, ``@isolated`` and ``set_rng_state`` all go through
:class:`Capture`: take the live states of a set of sources, later put them
back, restoring every source even when one fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .errors import RngRestoreError
from .sources import LazyGuard, Part, RngSource, registered_sources


def live_sources(devices: Sequence[int] | None, extra: Sequence[RngSource] = ()) -> list[RngSource]:
    """The registered sources that can be captured now, then ``extra``.

    Raises ``ValueError`` (before anything is captured) if ``devices`` names a
    device that a device source does not have.
    """
    families = registered_sources()
    if devices:
        for family in families:
            family.check_devices(devices)
    return [source for family in families for source in family.expand(devices)] + list(extra)


def restore_all(entries: Iterable[tuple[RngSource, Part]], guards: Iterable[LazyGuard] = ()) -> None:
    """Restore every entry and release every guard; then raise for those that failed.

    A failure does not stop the others: the process is never left half-restored
    without an error that names each source that could not be put back.
    """
    failures: dict[str, BaseException] = {}
    for source, part in entries:
        try:
            source.restore(part)
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            failures[source.name] = exc
    for guard in guards:
        try:
            guard.release()
        except Exception as exc:  # noqa: BLE001
            failures[f"{type(guard).__name__}"] = exc
    if failures:
        raise RngRestoreError(failures)


class Capture:
    """Live states of some sources, and guards for runtimes not yet initialized.

    Example::

        saved = Capture.take(devices=None)
        ...                     # draw from anything
        saved.restore()         # every generator as it was
    """

    __slots__ = ("entries", "guards")

    def __init__(self, entries: list[tuple[RngSource, Part]], guards: list[LazyGuard]) -> None:
        self.entries = entries
        self.guards = guards

    @classmethod
    def take(
        cls, devices: Sequence[int] | None, extra: Sequence[RngSource] = (), *, guard: bool = True
    ) -> Capture:
        """Capture every live source (and ``extra``); with ``guard``, guard lazy runtimes."""
        sources = live_sources(devices, extra)
        entries = [(source, source.capture()) for source in sources]
        guards: list[LazyGuard] = []
        if guard:
            for family in registered_sources():
                lazy = family.guard(devices)
                if lazy is not None:
                    guards.append(lazy)
        return cls(entries, guards)

    def seed(self, seed: int) -> None:
        """Seed every captured source and guarded runtime from ``seed``."""
        for source, _ in self.entries:
            source.seed(seed)
        for guard in self.guards:
            guard.seed(seed)

    def restore(self) -> None:
        """Put every captured source back, and undo what happened to guarded runtimes."""
        restore_all(self.entries, self.guards)
