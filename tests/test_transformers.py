"""isolate_evaluation: with it, evaluation during Trainer.train() does not change training.

Every training is tiny (3 epochs x 8 steps of a 4-16-1 MLP with dropout, a plain
``nn.Module`` that returns its loss, on the CPU) and draws from every global
generator in its datasets, its forward, ``compute_metrics`` and a callback. A
training "with evaluation" is compared, parameter by parameter with
``torch.equal``, with the same training with ``eval_strategy="no"``. Nothing is
downloaded. Skipped where transformers or accelerate is not installed.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import os
import pickle
import random
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import rng_fork

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach the Hub; read when transformers is imported
pytest.importorskip("accelerate", reason="needs accelerate: pip install -e '.[transformers]'")
pytest.importorskip("transformers", reason="needs transformers: pip install -e '.[transformers]'")

import safetensors.torch
import transformers

from rng_fork.integrations.transformers import _EvaluateInFork, isolate_evaluation

ROOT = Path(__file__).resolve().parents[1]
SEED = 1234
EPOCHS = 3
TRAIN_SIZE, BATCH = 64, 8  # 8 steps per epoch, 24 in all
EVAL_SIZE = 16


class Regression(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Fixed data, plus (``draw=True``) an augmentation drawing from torch, NumPy and Python."""

    def __init__(self, n: int, seed: int, *, draw: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)
        self.draw = draw

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.x[i]
        if self.draw:
            x = x + 0.01 * torch.rand(4) + 0.01 * float(np.random.rand()) + 0.01 * random.random()
        return {"x": x, "labels": self.y[i]}


class Net(nn.Module):
    """An MLP with dropout whose forward returns the loss, as Trainer expects.

    In eval mode it draws too (and uses none of it), as Monte-Carlo dropout or
    sampling would: ``prediction_step`` then draws from torch's generator.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        if not self.training:
            logits = logits + 0 * torch.rand_like(logits)
        return {"loss": nn.functional.mse_loss(logits, labels), "logits": logits}


def compute_metrics(prediction: Any) -> dict[str, float]:
    """A metric that draws from NumPy and Python (a bootstrap, say) and uses none of it."""
    error = float(np.mean((prediction.predictions - prediction.label_ids) ** 2))
    return {"mse": error + 0 * float(np.random.rand()) + 0 * random.random()}


class DrawingCallback(transformers.TrainerCallback):  # type: ignore[misc]
    """Draws from every generator in ``on_log`` (training's logs too) and ``on_evaluate``."""

    def __init__(self) -> None:
        self.evaluations = 0

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        torch.rand(2), np.random.rand(), random.random()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.evaluations += 1
        torch.rand(2), np.random.rand(), random.random()


@dataclasses.dataclass(frozen=True)
class Knobs:
    """What a test varies in the training data and the callbacks."""

    train_draws: bool = True
    callbacks: tuple[Callable[[], Any], ...] = ()


# What a training without evaluation leaves out of its TrainingArguments.
EVALUATION_ARGS = (
    "eval_strategy",
    "eval_steps",
    "eval_on_start",
    "load_best_model_at_end",
    "metric_for_best_model",
    "greater_is_better",
)


def make_trainer(
    out: Path, *, evaluate: bool, knobs: Knobs = Knobs(), trainer_class: Any = None, **overrides: Any
) -> Any:
    """A seeded Trainer; without ``evaluate``, the same one with ``eval_strategy="no"``."""
    kwargs: dict[str, Any] = {
        "output_dir": str(out),
        "num_train_epochs": EPOCHS,
        "per_device_train_batch_size": BATCH,
        "per_device_eval_batch_size": 4,
        "learning_rate": 0.05,
        "eval_strategy": "steps",
        "eval_steps": 5,
        "save_strategy": "no",
        "logging_steps": 4,
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": SEED,
        **overrides,
    }
    if not evaluate:
        for name in EVALUATION_ARGS:
            kwargs.pop(name, None)
    args = transformers.TrainingArguments(**kwargs)
    transformers.set_seed(SEED)  # Trainer seeds again; the model is made before it
    return (trainer_class or transformers.Trainer)(
        model=Net(),
        args=args,
        train_dataset=Regression(TRAIN_SIZE, seed=0, draw=knobs.train_draws),
        eval_dataset=Regression(EVAL_SIZE, seed=1, draw=True),
        compute_metrics=compute_metrics,
        callbacks=[DrawingCallback(), *(make() for make in knobs.callbacks)],
    )


Result = tuple[dict[str, torch.Tensor], rng_fork.RngState]


def train(
    out: Path, *, evaluate: bool, isolate: bool = False, knobs: Knobs = Knobs(), resume: str | None = None, **kw: Any
) -> Result:
    """Train; returns the final parameters and every global RNG's state."""
    trainer = make_trainer(out, evaluate=evaluate, knobs=knobs, **kw)
    if isolate:
        isolate_evaluation(trainer)
    trainer.train(resume_from_checkpoint=resume)
    evaluations = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, DrawingCallback)).evaluations
    assert (evaluations > 0) == evaluate
    return params(trainer.model), rng_fork.get_rng_state()


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# The trainings without evaluation, shared by the tests of this module.
_BASELINES: dict[str, Result] = {}


@pytest.fixture
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Result]:
    def get(knobs: Knobs = Knobs(), **kwargs: Any) -> Result:
        key = repr((knobs, sorted(kwargs.items())))
        if key not in _BASELINES:
            _BASELINES[key] = train(tmp_path_factory.mktemp("baseline"), evaluate=False, knobs=knobs, **kwargs)
        return _BASELINES[key]

    return get


# Trainer arguments of the trainings with evaluation; the baseline gets the
# same minus the evaluation ones (see make_trainer).
SCHEDULES: dict[str, dict[str, Any]] = {
    "every_5_steps": {},
    "every_epoch": {"eval_strategy": "epoch"},
    "on_start_and_every_5_steps": {"eval_on_start": True},
    "two_workers": {"dataloader_num_workers": 2},
    "two_persistent_workers": {"dataloader_num_workers": 2, "dataloader_persistent_workers": True},
}


# Without isolate_evaluation, evaluation changes training.


@pytest.mark.slow
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_evaluation_changes_training_without_isolation(
    schedule: str, tmp_path: Path, baseline: Callable[..., Result]
) -> None:
    base_params, base_state = baseline(**SCHEDULES[schedule])
    params, state = train(tmp_path, evaluate=True, **SCHEDULES[schedule])
    assert not same(params, base_params)
    assert largest_difference(params, base_params) > 1e-4  # not a rounding difference
    assert state != base_state


@pytest.mark.slow
def test_restoring_in_on_evaluate_is_not_enough(tmp_path: Path, baseline: Callable[..., Result]) -> None:
    """No callback hook fires before evaluation starts, and later callbacks' ``on_evaluate`` come after."""

    class SaveAtStepEndRestoreAtEvaluate(transformers.TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.state = rng_fork.get_rng_state()  # evaluation follows only a step's or an epoch's end

        on_epoch_end = on_step_end

        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            rng_fork.set_rng_state(self.state)

    knobs = Knobs(callbacks=(SaveAtStepEndRestoreAtEvaluate, DrawingCallback))
    base, _ = baseline(knobs)
    assert not same(train(tmp_path / "naive", evaluate=True, knobs=knobs)[0], base)
    assert same(train(tmp_path / "isolated", evaluate=True, isolate=True, knobs=knobs)[0], base)


# With isolate_evaluation, training is bit-identical to training without evaluation.


@pytest.mark.slow
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_isolated_evaluation_does_not_change_training(
    schedule: str, tmp_path: Path, baseline: Callable[..., Result]
) -> None:
    base_params, base_state = baseline(**SCHEDULES[schedule])
    params, state = train(tmp_path, evaluate=True, isolate=True, **SCHEDULES[schedule])
    assert same(params, base_params)
    assert state == base_state


def checkpoints(out: Path) -> dict[str, Path]:
    """The checkpoints in ``out``, by name, in the order of their steps."""
    return {path.name: path for path in sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))}


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    loaded: dict[str, torch.Tensor] = safetensors.torch.load_file(str(checkpoint / "model.safetensors"))
    return loaded


def rng_file(checkpoint: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = torch.load(checkpoint / "rng_state.pth", weights_only=False)
    return loaded


def same_rng_file(a: dict[str, Any], b: dict[str, Any]) -> bool:
    numpy_a, numpy_b = a["numpy"], b["numpy"]
    return (
        a.keys() == b.keys()
        and a["python"] == b["python"]
        and torch.equal(a["cpu"], b["cpu"])
        and numpy_a[0] == numpy_b[0]
        and np.array_equal(numpy_a[1], numpy_b[1])
        and tuple(numpy_a[2:]) == tuple(numpy_b[2:])
    )


SAVE_EVERY_4 = {"save_strategy": "steps", "save_steps": 4, "eval_steps": 4}


@pytest.mark.slow
def test_load_best_model_at_end(tmp_path: Path) -> None:
    """Each checkpoint equals the baseline's at the same step, so the best one loaded at the end does too."""
    # The "best" is the highest evaluation loss, so that the model loaded at the end is not the last one.
    best_options = {"load_best_model_at_end": True, "metric_for_best_model": "loss", "greater_is_better": True}
    kwargs = {**SAVE_EVERY_4, **best_options}
    base_params, base_state = train(tmp_path / "base", evaluate=False, **kwargs)
    params, state = train(tmp_path / "isolated", evaluate=True, isolate=True, **kwargs)
    base_checkpoints, isolated = checkpoints(tmp_path / "base"), checkpoints(tmp_path / "isolated")
    assert base_checkpoints.keys() == isolated.keys() and len(isolated) == EPOCHS * TRAIN_SIZE // BATCH // 4
    for name, path in isolated.items():
        assert same(weights(path), weights(base_checkpoints[name])), name
    best = json.loads((isolated["checkpoint-24"] / "trainer_state.json").read_text())["best_model_checkpoint"]
    assert Path(best).name != "checkpoint-24"
    assert same(params, weights(base_checkpoints[Path(best).name]))
    assert not same(params, base_params)  # the best model, not the last
    assert state == base_state

    train(tmp_path / "plain", evaluate=True, **kwargs)
    plain = checkpoints(tmp_path / "plain")
    assert same(weights(plain["checkpoint-4"]), weights(base_checkpoints["checkpoint-4"]))  # before any evaluation
    assert not any(same(weights(plain[name]), weights(base_checkpoints[name])) for name in list(plain)[1:])


# Checkpoints: rng_state.pth holds the training's state, and a resumed run goes on as the uninterrupted one.

# A training set that draws in __getitem__ makes Trainer's own resumption inexact
# in the middle of an epoch (the batches prefetched before rng_state.pth is
# loaded draw from another state), with or without evaluation: dropout only here.
DROPOUT_ONLY = Knobs(train_draws=False)


_SAVED: dict[str, tuple[Result, Path]] = {}


@pytest.fixture
def saved(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Result, Path]]:
    """A training that saves every 4 steps, shared by the tests below: ``"base"``
    without evaluation, ``"isolated"`` and ``"plain"`` with evaluation before
    each save, with and without isolate_evaluation. Returns its result and its
    output directory."""

    def get(kind: str) -> tuple[Result, Path]:
        if kind not in _SAVED:
            out = tmp_path_factory.mktemp(kind)
            result = train(out, evaluate=kind != "base", isolate=kind == "isolated", knobs=DROPOUT_ONLY, **SAVE_EVERY_4)
            _SAVED[kind] = result, out
        return _SAVED[kind]

    return get


@pytest.mark.slow
def test_checkpoints_hold_the_training_state(saved: Callable[[str], tuple[Result, Path]]) -> None:
    (base_params, base_state), base_out = saved("base")
    (params, state), isolated_out = saved("isolated")
    assert same(params, base_params) and state == base_state
    (plain_params, _), plain_out = saved("plain")
    assert not same(plain_params, base_params)
    base, isolated, plain = checkpoints(base_out), checkpoints(isolated_out), checkpoints(plain_out)
    assert base.keys() == isolated.keys() == plain.keys() and len(base) == 6
    for name in base:
        assert same_rng_file(rng_file(isolated[name]), rng_file(base[name])), name
        # Evaluation runs right before each save: without the fork, its state is what is saved.
        assert not same_rng_file(rng_file(plain[name]), rng_file(base[name])), name


# Trainer 4.x resumes inexactly in the middle of any epoch after the first, with
# or without evaluation (checked with 4.57.6); 5.x resumes exactly.
OLD_TRAINER_RESUME = int(transformers.__version__.split(".")[0]) < 5


@pytest.mark.slow
@pytest.mark.parametrize(
    "checkpoint",
    [
        pytest.param(  # the middle of the second epoch
            "checkpoint-12",
            marks=pytest.mark.xfail(OLD_TRAINER_RESUME, reason="Trainer 4.x's own mid-epoch resume", strict=True),
        ),
        "checkpoint-16",  # the end of the second epoch
    ],
)
def test_resume_after_an_evaluation(
    checkpoint: str, tmp_path: Path, saved: Callable[[str], tuple[Result, Path]]
) -> None:
    (base_params, base_state), _ = saved("base")
    _, isolated_out = saved("isolated")
    resume = str(isolated_out / checkpoint)
    params, state = train(tmp_path, evaluate=True, isolate=True, knobs=DROPOUT_ONLY, resume=resume, **SAVE_EVERY_4)
    assert same(params, base_params)
    assert state == base_state


# A fork blind to any one source is not enough: the test's training draws from each.


@pytest.mark.slow
@pytest.mark.parametrize("source", ["python", "numpy", "torch"])
def test_every_source_matters(
    source: str, tmp_path: Path, baseline: Callable[..., Result], hide_source: Callable[[str], None]
) -> None:
    base, _ = baseline()
    hide_source(source)
    params, _ = train(tmp_path, evaluate=True, isolate=True)
    assert not same(params, base)


# Plumbing.


def test_returns_the_trainer_and_wraps_once(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, evaluate=True)
    assert isolate_evaluation(trainer) is trainer
    wrapper = vars(trainer)["_evaluate"]
    assert isolate_evaluation(trainer) is trainer and vars(trainer)["_evaluate"] is wrapper
    assert "fork_rng" in repr(wrapper)


def test_holds_the_trainer_weakly(tmp_path: Path) -> None:
    """No reference cycle: a deleted trainer is freed at once, its loaders' workers with it.

    (Left to the cyclic collector, a DataLoader with persistent workers waits
    seconds for each worker to exit.)
    """
    trainer = isolate_evaluation(make_trainer(tmp_path, evaluate=True))
    wrapper, alive = vars(trainer)["_evaluate"], weakref.ref(trainer)
    del trainer
    assert alive() is None
    with pytest.raises(ReferenceError, match="no longer exists"):
        wrapper()


class Holder:
    """A stand-in for a trainer, for copies: anything weakly referable."""


def test_copies_evaluate_themselves(tmp_path: Path) -> None:
    trainer = isolate_evaluation(make_trainer(tmp_path, evaluate=True))
    clone = copy.deepcopy(trainer)
    assert vars(clone)["_evaluate"].trainer is clone
    shallow = copy.copy(trainer)
    assert vars(shallow)["_evaluate"].trainer is trainer  # shared with the original, until:
    assert isolate_evaluation(shallow) is shallow and vars(shallow)["_evaluate"].trainer is shallow
    assert vars(trainer)["_evaluate"].trainer is trainer
    # A Trainer that has trained no longer pickles (accelerate's state holds weakrefs), so a stand-in:
    holder = Holder()
    holder.evaluate = _EvaluateInFork(holder)  # type: ignore[attr-defined]
    unpickled = pickle.loads(pickle.dumps(holder))
    assert unpickled.evaluate.trainer is unpickled


def test_runs_the_subclass_evaluate_inside_a_fork(tmp_path: Path) -> None:
    seen: list[bool] = []

    class MyTrainer(transformers.Trainer):  # type: ignore[misc]
        def _evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
            before = rng_fork.get_rng_state()
            torch.rand(3)
            seen.append(before != rng_fork.get_rng_state())
            return {}

    trainer = isolate_evaluation(make_trainer(tmp_path, evaluate=True, trainer_class=MyTrainer))
    before = rng_fork.get_rng_state()
    assert trainer._evaluate(None, None) == {}
    assert seen == [True] and rng_fork.get_rng_state() == before


def test_refuses_what_it_cannot_isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match=r"needs a transformers\.Trainer, not object"):
        isolate_evaluation(object())
    trainer = make_trainer(tmp_path, evaluate=True)
    trainer._evaluate = lambda *args, **kwargs: {}
    with pytest.raises(RuntimeError, match="already replaced"):
        isolate_evaluation(trainer)
    del trainer._evaluate
    monkeypatch.delattr(transformers.Trainer, "_evaluate")
    with pytest.raises(RuntimeError, match="has no _evaluate method"):
        isolate_evaluation(trainer)
    assert "_evaluate" not in vars(trainer)


@pytest.mark.parametrize("missing", ["transformers", "accelerate"])
def test_import_without_transformers_says_how_to_install(missing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # find_spec then finds nothing
    monkeypatch.delitem(sys.modules, "rng_fork.integrations.transformers")
    with pytest.raises(ImportError, match=rf"needs {missing}: pip install \"rng_fork\[transformers\]\"") as info:
        importlib.import_module("rng_fork.integrations.transformers")
    assert info.value.name == missing


# A fresh interpreter: importing rng_fork and the integration imports neither package.
FRESH = """
    import json, sys
    hf_modules = lambda: sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "accelerate"))
    import rng_fork
    after_rng_fork = hf_modules()
    from rng_fork.integrations.transformers import _EvaluateInFork, isolate_evaluation
    print(json.dumps({"after_rng_fork": after_rng_fork, "after_integration": hf_modules()}))
"""


@pytest.mark.slow
def test_importing_imports_neither_transformers_nor_accelerate() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FRESH)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"after_rng_fork": [], "after_integration": []}
