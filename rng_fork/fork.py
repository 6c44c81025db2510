"""``fork_rng``: run a block, then put every RNG back as if it had never run."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ._checks import check_devices, check_seed
from ._swap import NO_SOURCES, Block, enter, extra_sources, leave_opened
from .sources import objects_of

F = TypeVar("F", bound=Callable[..., Any])


class fork_rng(Block):  # noqa: N801 - named like torch.random.fork_rng, which it replaces
    """Fork every RNG for the duration of a block.

    On entry it captures Python's ``random``, NumPy's legacy global generator,
    torch's CPU generator, every initialized device of every accelerator type
    (CUDA, XPU, MTIA, MPS, a PrivateUse1 backend) and the objects in
    ``generators``; on exit (return, exception or ``KeyboardInterrupt``) it
    restores them, so the code after the block draws exactly what it would have
    drawn had the block never run. The block starts from the current state.

    Args:
        seed: if given, an int in ``[0, 2**32)`` that seeds every forked source
            after the snapshot, so the block is deterministic wherever it runs.
        enabled: ``False`` makes a plain block (as in torch).
        devices: device indices to fork, for every device type; ``[]`` forks
            none; default: every initialized device. No runtime is ever
            initialized by the fork.
        generators: extra objects to fork: ``torch.Generator``,
            ``numpy.random.Generator``/``RandomState``/``BitGenerator``,
            ``random.Random`` or a ``DataLoader`` (its and its sampler's generator).

    Bad arguments raise here, before anything changes. One object can be entered
    again after it exits, and blocks nest to any depth. A ``KeyboardInterrupt``
    (SIGINT) that arrives while the fork saves or restores is raised once every
    generator is back; see the README's "Semantics, precisely".

    Example::

        with fork_rng():
            evaluate(model, test_loader)   # draws whatever it likes
        train_step()                       # sees the same numbers as without evaluate()
    """

    __slots__ = ("__weakref__", "_extra", "devices", "enabled", "seed")

    def __init__(
        self,
        seed: int | None = None,
        *,
        enabled: bool = True,
        devices: Iterable[object] | None = None,
        generators: Iterable[object] = (),
    ) -> None:
        # The defaults skip the checks: a fork in a training loop is built often.
        self.seed = None if seed is None else check_seed(seed)
        if enabled is not True and enabled is not False:
            raise TypeError(f"enabled must be a bool, not {type(enabled).__name__}")
        self.enabled = enabled
        self.devices = None if devices is None else check_devices(devices)
        self._extra = NO_SOURCES if type(generators) is tuple and not generators else extra_sources(generators)

    # The ``with`` calls them directly: a fork is on training loops' hot path. ``__exit__``
    # closes what was entered, whatever ``enabled`` says now.
    __enter__ = enter
    __exit__ = leave_opened

    def __call__(self, fn: F) -> F:
        """Use as a decorator: every call (generator, coroutine) runs in its own fork.

        The same as :func:`rng_fork.isolated` with this fork's arguments.

        Example::

            @fork_rng(seed=0)
            def sample_images(model):
                return model.sample(16)
        """
        from .isolate import isolate_checked

        if not self.enabled:
            return fn
        return isolate_checked(fn, self.seed, self.devices, self._extra)

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its arguments: its sources hold views of its generators' memory, so a
        # copy made field by field would fork the original generators, not the copies of them.
        return (_fork_from, (self.seed, self.enabled, self.devices, objects_of(self._extra.sources)))

    def __repr__(self) -> str:
        return f"fork_rng(seed={self.seed}, enabled={self.enabled}, devices={self.devices})"


def _fork_from(
    seed: int | None, enabled: bool, devices: tuple[int, ...] | None, generators: tuple[object, ...]
) -> fork_rng:
    """A ``fork_rng`` from what :meth:`fork_rng.__reduce__` keeps (pickle and copy call it)."""
    return fork_rng(seed, enabled=enabled, devices=devices, generators=generators)
