"""Exceptions and warnings raised by rng_fork."""

from __future__ import annotations

from collections.abc import Mapping


class RngRestoreError(RuntimeError):
    """One or more sources could not be put back.

    Every other source was still restored; ``failures`` maps each source that
    failed to the exception it raised, so nothing is left half-restored silently.

    Example::

        try:
            with fork_rng():
                ...
        except RngRestoreError as err:
            print(sorted(err.failures))   # e.g. ['cuda:0']
    """

    def __init__(self, failures: Mapping[str, BaseException]) -> None:
        self.failures = dict(failures)
        detail = "; ".join(f"{name}: {type(exc).__name__}: {exc}" for name, exc in self.failures.items())
        super().__init__(f"could not restore the RNG state of {', '.join(self.failures)} ({detail})")
