"""Keep evaluation during ``transformers.Trainer.train()`` from changing training.

With ``eval_strategy="steps"`` or ``"epoch"``, every evaluation that ``train()``
runs draws from the global generators: creating the evaluation ``DataLoader``
iterator draws a base seed from torch's CPU generator, and augmentations, the
model's forward, ``compute_metrics`` and callbacks may draw from torch, NumPy,
Python or CUDA. Every later training draw shifts (dropout masks, the next
epoch's worker seeds, augmentations), so the trained weights depend on whether,
and how often, evaluation runs, and the RNG state that Trainer saves into each
checkpoint (``rng_state.pth``) is the evaluation's.

:func:`isolate_evaluation` runs every such evaluation inside
:func:`rng_fork.fork_rng`, so that a ``train()`` with evaluation ends with the
weights, bit for bit, of the same ``train()`` without it.

Example::

    from transformers import Trainer
    from rng_fork.integrations.transformers import isolate_evaluation

    trainer = isolate_evaluation(Trainer(model=model, args=args, train_dataset=train, eval_dataset=test))
    trainer.train()                         # the same weights as with eval_strategy="no"

Importing this module imports neither transformers nor accelerate.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import weakref
from typing import Any, TypeVar

from ..fork import fork_rng

__all__ = ["isolate_evaluation"]

_INSTALL = 'pip install "rng_fork[transformers]" (or: pip install transformers accelerate)'

# Only whether they are installed: importing transformers costs seconds.
# Trainer itself refuses to run without accelerate.
_MISSING = [name for name in ("transformers", "accelerate") if importlib.util.find_spec(name) is None]
if _MISSING:
    raise ImportError(
        f"rng_fork.integrations.transformers needs {' and '.join(_MISSING)}: {_INSTALL}", name=_MISSING[0]
    )

# The Trainer method that every evaluation during train() goes through (read in
# transformers 4.57 and 5.24): both `eval_on_start` and `_maybe_log_save_evaluate`
# call it, and the latter saves the checkpoint (rng_state.pth included) only
# after it returns.
_EVALUATE = "_evaluate"

_TrainerT = TypeVar("_TrainerT")


class _EvaluateInFork:
    """``trainer._evaluate`` of one trainer, run inside :func:`~rng_fork.fork_rng`.

    It holds the trainer weakly: a cycle through the trainer's ``__dict__``
    would leave the trainer to the cyclic garbage collector, and a DataLoader
    with persistent workers that is finalized there waits seconds for each
    worker to exit. Copies and pickles of the trainer get a wrapper of their own.
    """

    def __init__(self, trainer: Any) -> None:
        self._trainer = weakref.ref(trainer)

    @property
    def trainer(self) -> Any:
        trainer = self._trainer()
        if trainer is None:
            raise ReferenceError("isolate_evaluation: the trainer of this _evaluate no longer exists")
        return trainer

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        trainer = self.trainer
        # The class's method, looked up at each call: a subclass's override is
        # what runs.
        evaluate = getattr(type(trainer), _EVALUATE)
        with fork_rng():
            return evaluate(trainer, *args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_EvaluateInFork, (self.trainer,))

    def __deepcopy__(self, memo: dict[int, Any]) -> _EvaluateInFork:
        # The trainer is in memo when its own deep copy reaches this attribute.
        return _EvaluateInFork(copy.deepcopy(self.trainer, memo))

    def __repr__(self) -> str:
        trainer = self._trainer()
        name = type(trainer).__name__ if trainer is not None else "<deleted trainer>"
        return f"<{name}.{_EVALUATE} inside rng_fork.fork_rng()>"


def isolate_evaluation(trainer: _TrainerT) -> _TrainerT:
    """Run every evaluation of ``trainer.train()`` inside a fork of every RNG.

    Python's ``random``, NumPy's legacy global generator, torch's CPU generator
    and every initialized CUDA device draw, after each evaluation, exactly what
    they would have drawn had it never run (see :func:`rng_fork.fork_rng`). So a
    ``train()`` with evaluation (``eval_strategy="steps"`` or ``"epoch"``,
    ``eval_on_start``, ``load_best_model_at_end``) ends with the weights and the
    generator states of the same ``train()`` with ``eval_strategy="no"``, and
    each checkpoint's ``rng_state.pth`` holds the training's state, so a run
    resumed from it goes on as the uninterrupted run does.

    Everything the evaluation does is inside the fork: ``get_eval_dataloader``
    and its iterator, ``prediction_step`` and the model's forward,
    ``compute_metrics``, the callbacks' ``on_prediction_step``, ``on_log`` and
    ``on_evaluate``, the hyperparameter-search report and a
    ``ReduceLROnPlateau`` step. It works by giving this trainer object its own
    ``_evaluate`` attribute, the Trainer method that every evaluation during
    ``train()`` goes through; a callback cannot do it exactly, since no callback
    hook fires before an evaluation starts. Calling it again on the same trainer
    changes nothing; on a ``copy.copy`` of one, whose wrapper would evaluate the
    original, it gives the copy its own. ``trainer.evaluate()`` called directly
    is not affected: put it inside ``with fork_rng():``.

    Args:
        trainer: a ``transformers.Trainer`` (or a subclass's instance).

    Returns:
        ``trainer`` itself, so that it can wrap the constructor call.

    Raises:
        TypeError: ``trainer`` is not a ``transformers.Trainer``.
        RuntimeError: the trainer's class has no ``_evaluate`` method (an
            older transformers), or its ``_evaluate`` attribute was already
            replaced by something else.

    Example::

        from transformers import Trainer, TrainingArguments
        from rng_fork.integrations.transformers import isolate_evaluation

        args = TrainingArguments("out", eval_strategy="steps", eval_steps=50)
        trainer = isolate_evaluation(Trainer(model=model, args=args, train_dataset=train, eval_dataset=test))
        trainer.train()
    """
    # A Trainer exists only once transformers.trainer is imported: no import here.
    trainer_module = sys.modules.get("transformers.trainer")
    if trainer_module is None or not isinstance(trainer, trainer_module.Trainer):
        raise TypeError(f"isolate_evaluation needs a transformers.Trainer, not {type(trainer).__qualname__}")
    if not callable(getattr(type(trainer), _EVALUATE, None)):
        version = getattr(sys.modules.get("transformers"), "__version__", "unknown")
        raise RuntimeError(
            f"isolate_evaluation: {type(trainer).__qualname__} has no {_EVALUATE} method, through which "
            f"transformers 4.57 to 5.24 run every evaluation during train() (installed: transformers {version})"
        )
    current = vars(trainer).get(_EVALUATE)
    if isinstance(current, _EvaluateInFork):
        if current._trainer() is not trainer:  # a shallow copy's: it would evaluate the original
            setattr(trainer, _EVALUATE, _EvaluateInFork(trainer))
        return trainer
    if current is not None:
        raise RuntimeError(
            f"isolate_evaluation: this trainer's {_EVALUATE} attribute is already replaced by {current!r}, "
            "which the fork would bypass"
        )
    setattr(trainer, _EVALUATE, _EvaluateInFork(trainer))
    return trainer
