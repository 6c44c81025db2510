"""A Lightning callback that keeps validation from changing training.

During ``Trainer.fit`` every validation run draws from the global generators:
creating the validation ``DataLoader`` iterator draws a base seed (a shuffling
sampler one more) from torch's CPU generator, and augmentations or
``validation_step`` may draw from torch, NumPy, Python or CUDA. Lightning
isolates only the sanity check, so validation shifts every later training draw
(dropout masks, the next epoch's shuffle, worker seeds, augmentations) and the
training curve depends on whether, and how often, validation runs.

:class:`IsolateRng` forks every RNG around each validation run, so that a fit
with validation ends with the same weights, bit for bit, as the same fit
without it.

Example::

    import lightning.pytorch as pl          # or: import pytorch_lightning as pl
    from rng_fork.integrations.lightning import IsolateRng

    trainer = pl.Trainer(max_epochs=10, callbacks=[IsolateRng()])
    trainer.fit(model)                      # the same weights as with limit_val_batches=0

It works with both ``lightning`` (``lightning.pytorch``) and
``pytorch_lightning``. Importing this module imports neither.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from ..fork import fork_rng
from ..state import RngState, get_rng_state, set_rng_state

__all__ = ["IsolateRng"]

Mode = Literal["loop", "hooks"]

# The two distributions ship the same code under two import names, each with its
# own Callback and Trainer classes.
_PACKAGES = ("lightning.pytorch", "pytorch_lightning")
_INSTALL = "pip install lightning (pytorch_lightning works too)"

# Only whether one is installed: importing it here would cost seconds and could
# import the package the user does not use.
if all(importlib.util.find_spec(name.partition(".")[0]) is None for name in _PACKAGES):
    raise ImportError(f"rng_fork.integrations.lightning needs Lightning: {_INSTALL}", name="lightning")

# ``run`` is required; ``setup_data`` (Lightning >= 2.0) is wrapped when present.
_WRAPPED_METHODS = ("run", "setup_data")
_ORIGINAL = "_isolate_rng_original"
_UNBOUND = "_isolate_rng_unbound"

# At run time each instance's class also derives from the Callback of the
# imported package(s) (see ``__new__``); for type checkers it derives from Any,
# so that an instance is accepted where either package's Callback is expected.
_CallbackBase: Any = object

_T = TypeVar("_T", bound="IsolateRng")


class IsolateRng(_CallbackBase):  # type: ignore[misc]
    """Run every validation of a fit inside a fork of every RNG.

    Python's ``random``, NumPy's legacy global generator, torch's CPU generator
    and every initialized CUDA device draw, after each validation run, exactly
    what they would have drawn had it never run (see :func:`rng_fork.fork_rng`).
    So a fit with validation, whatever its schedule (every epoch,
    ``val_check_interval``, ``check_val_every_n_epoch``, reloaded dataloaders),
    ends with the weights of the same fit with ``limit_val_batches=0``.

    The obvious hooks are not enough: the validation loop creates its
    ``DataLoader`` iterator, which draws the loader's base seed from torch's
    generator, *before* ``on_validation_start`` fires, and the LightningModule's
    own ``on_validation_end`` runs after the callbacks'. Hence two modes:

    ``"loop"`` (default)
        At ``setup`` the ``run`` and ``setup_data`` methods of
        ``trainer.fit_loop.epoch_loop.val_loop`` are wrapped, on that loop
        object only, so that each call runs inside :func:`~rng_fork.fork_rng`:
        everything validation does is isolated, ``val_dataloader()`` included.
        The wrappers are removed at ``teardown`` and when the fit raises. If the
        loop does not have that shape (a future Lightning, a custom loop), this
        mode warns and falls back to ``"hooks"``.
    ``"hooks"``
        Documented callback hooks only: the state is saved at the end of every
        training batch (validation runs only right after one) and restored at
        ``on_validation_end``. It misses draws made after this callback's
        ``on_validation_end`` (later callbacks, the LightningModule's hook), and
        in ``val_dataloader()`` when there is no sanity check; draws made
        between the end of the batch and validation (later callbacks' and the
        LightningModule's ``on_train_batch_end``) are undone with validation's.
        It costs a snapshot per training batch (about 0.1 ms on a CPU).

    Each instance is a ``Callback`` of whichever of ``lightning.pytorch`` and
    ``pytorch_lightning`` is imported when it is created (both if both are; if
    neither is, ``lightning.pytorch`` is imported), so create it after importing
    Lightning. Only ``Trainer.fit`` is affected; at most one per trainer.

    Args:
        mode: ``"loop"`` or ``"hooks"``, as above.

    Example::

        import lightning.pytorch as pl
        from rng_fork.integrations.lightning import IsolateRng

        trainer = pl.Trainer(max_epochs=3, val_check_interval=0.5, callbacks=[IsolateRng()])
        trainer.fit(model)
    """

    def __new__(cls: type[_T], *args: Any, **kwargs: Any) -> _T:
        # Which Callback class a Trainer accepts is known only once Lightning is
        # imported, which may be after this module was.
        return object.__new__(_bind(cls))

    def __init__(self, mode: Mode = "loop") -> None:
        if mode not in ("loop", "hooks"):
            raise ValueError(f"mode must be 'loop' or 'hooks', not {mode!r}")
        super().__init__()
        self.mode: Mode = mode
        #: How many times a state was put back: in ``"loop"`` mode one per
        #: validation run and one per ``setup_data`` call. For diagnostics.
        self.restores = 0
        self._patched_loop: Any = None
        self._hooks_active = False
        self._batch_state: RngState | None = None
        self._sanity_state: RngState | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # The bound class is made at run time, so pickle cannot find it by name:
        # rebind on loading. A copy is not attached to any trainer.
        cls = type(self).__dict__.get(_UNBOUND, type(self))
        runtime = {"_patched_loop": None, "_hooks_active": False, "_batch_state": None, "_sanity_state": None}
        return (_new, (cls,), {**self.__dict__, **runtime})

    def __repr__(self) -> str:
        return f"IsolateRng(mode={self.mode!r})"

    @property
    def active_mode(self) -> Mode | None:
        """``"loop"`` while the validation loop is wrapped, ``"hooks"`` while the
        hook fallback is armed, ``None`` outside a fit."""
        if self._patched_loop is not None:
            return "loop"
        return "hooks" if self._hooks_active else None

    # -- "loop" mode -------------------------------------------------------

    def _isolated(self, method: Callable[..., Any]) -> Callable[..., Any]:
        # fork_rng rather than get_rng_state/set_rng_state: it also undoes a CUDA
        # initialization that happens inside validation, and chains a failed
        # restore to validation's own exception.
        @functools.wraps(method)
        def isolated(*args: Any, **kwargs: Any) -> Any:
            with fork_rng():
                result = method(*args, **kwargs)
            self.restores += 1
            return result

        setattr(isolated, _ORIGINAL, method)
        return isolated

    def _patch(self, trainer: Any) -> bool:
        loop = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "val_loop", None)
        if loop is None or not callable(getattr(loop, "run", None)):
            return False
        names = [name for name in _WRAPPED_METHODS if callable(getattr(loop, name, None))]
        if any(hasattr(getattr(loop, name), _ORIGINAL) for name in names):
            raise RuntimeError("the validation loop is already wrapped by another IsolateRng callback")
        for name in names:
            # An instance attribute shadows the class's method (a non-data
            # descriptor) for this loop only, until _unpatch deletes it.
            setattr(loop, name, self._isolated(getattr(loop, name)))
        self._patched_loop = loop
        return True

    def _unpatch(self) -> None:
        loop, self._patched_loop = self._patched_loop, None
        if loop is None:
            return
        for name in _WRAPPED_METHODS:
            current = vars(loop).get(name)
            if current is not None and hasattr(current, _ORIGINAL):
                delattr(loop, name)

    # -- Lightning hooks ---------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """For ``fit``: wrap the validation loop (``"loop"``) or arm the hooks."""
        if stage != "fit":
            return
        self._reset()
        if self.mode == "loop":
            if self._patch(trainer):
                return
            warnings.warn(
                "IsolateRng: trainer.fit_loop.epoch_loop.val_loop.run not found; falling back to mode='hooks'",
                RuntimeWarning,
                stacklevel=2,
            )
        self._hooks_active = True

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Remove the wrappers and forget saved states."""
        self._reset()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Clean up as ``teardown`` does, which Lightning skips when a fit raises."""
        self._reset()

    def _reset(self) -> None:
        self._unpatch()
        self._hooks_active = False
        self._batch_state = self._sanity_state = None

    # -- "hooks" mode ------------------------------------------------------

    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        """Hooks mode: save the state before the sanity check."""
        if self._hooks_active:
            self._sanity_state = get_rng_state()

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        """Hooks mode: undo the sanity check (Lightning does too, but not on exceptions)."""
        if self._hooks_active and self._sanity_state is not None:
            self._restore(self._sanity_state)
            self._sanity_state = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        """Hooks mode: forget a state that no validation run used."""
        self._batch_state = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Hooks mode: save the state; validation, mid-epoch or at the epoch's
        end, runs only right after a training batch."""
        if self._hooks_active:
            self._batch_state = get_rng_state()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """Hooks mode: put back the state saved at the end of the training batch."""
        if not self._hooks_active or getattr(trainer, "sanity_checking", False):
            return
        if self._batch_state is not None:
            self._restore(self._batch_state)
            self._batch_state = None

    def _restore(self, state: RngState) -> None:
        # strict=False: a CUDA device initialized during validation has no part
        # in the state and keeps what validation did to it.
        set_rng_state(state, strict=False)
        self.restores += 1


def _new(cls: type[_T]) -> _T:
    """Unpickling: an instance of ``cls`` bound to the Lightning imported here."""
    return cls.__new__(cls)


def _bind(cls: type[_T]) -> type[_T]:
    """``cls``, also deriving from the Callback of each imported Lightning package."""
    unbound: type[Any] = cls.__dict__.get(_UNBOUND, cls)
    packages = tuple(name for name in _PACKAGES if name in sys.modules)
    bound: type[_T] = _bound_class(unbound, packages or (_import_lightning(),))
    return bound


# One bound class per (class, packages), so instances made alike share a type.
_BOUND: dict[tuple[type[Any], tuple[str, ...]], type[Any]] = {}


def _bound_class(cls: type[Any], packages: tuple[str, ...]) -> type[Any]:
    key = (cls, packages)
    if key not in _BOUND:
        callbacks = [importlib.import_module(name).Callback for name in packages]
        missing = tuple(callback for callback in callbacks if not issubclass(cls, callback))
        # Same name and qualname: Lightning keys callback state by the qualname.
        namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
        bound = type(cls.__name__, (cls, *missing), {**namespace, _UNBOUND: cls}) if missing else cls
        _BOUND.setdefault(key, bound)
    return _BOUND[key]


def _import_lightning() -> str:
    errors: list[ImportError] = []
    for name in _PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            errors.append(exc)
            continue
        return name
    raise ImportError(f"IsolateRng needs Lightning: {_INSTALL}", name="lightning") from errors[0]
