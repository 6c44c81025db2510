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


class RngTouchedError(AssertionError):
    """Raised by :func:`rng_fork.assert_untouched` when a block consumed randomness.

    ``sources`` lists the names of the sources that changed; ``explanation``
    (with ``assert_untouched(explain=True)``) says where each was consumed.

    Example::

        with pytest.raises(RngTouchedError, match="torch"):
            with assert_untouched():
                torch.rand(1)
    """

    def __init__(self, sources: list[str], explanation: str | None = None) -> None:
        self.sources = list(sources)
        self.explanation = explanation
        message = f"the block consumed or changed randomness of: {', '.join(self.sources)}"
        super().__init__(message if explanation is None else f"{message}\n{explanation}")


class RngForkWarning(UserWarning):
    """Warns of a use of rng_fork whose guarantee does not hold (forks in two threads at once)."""
