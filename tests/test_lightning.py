"""IsolateRng: with the callback, validation does not change what a fit trains.

Every fit is tiny (3 epochs x 4 batches of a 4-16-1 MLP with dropout, on the CPU
unless marked ``cuda``) and draws from every global generator in its dataset,
``training_step`` and ``validation_step``. A fit "with validation" is compared,
parameter by parameter with ``torch.equal``, with the same fit "without
validation" (``limit_val_batches=0``). Skipped where Lightning is not installed.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import json
import os
import pickle
import random
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Subset, dataloader

import rng_fork

pytest.importorskip("lightning.pytorch", reason="needs Lightning: pip install lightning")

from rng_fork.integrations.lightning import IsolateRng


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


# Both import names where both are installed (installing lightning brings
# pytorch_lightning); imported now, so that every IsolateRng made in these
# tests is a Callback of both.
PACKAGES = ["lightning.pytorch", *(["pytorch_lightning"] if _installed("pytorch_lightning") else [])]
for _name in PACKAGES:
    importlib.import_module(_name)

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*shuffling enabled:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval:UserWarning"),
]

ROOT = Path(__file__).resolve().parents[1]
SEED = 1234
EPOCHS = 3


class NoisyDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Fixed data plus an "augmentation" drawing from torch, NumPy and Python."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = 0.01 * torch.rand(4) + 0.01 * float(np.random.rand()) + 0.01 * random.random()
        return self.x[i] + noise, self.y[i]


@dataclasses.dataclass(frozen=True)
class Knobs:
    """What a test varies in the model and its loaders."""

    workers: int = 0
    val_dataloader: bool = True
    draw_in_on_validation_end: bool = False
    draw_in_val_dataloader: bool = False
    draw_in_on_train_batch_end: bool = False
    fail_at_step: int | None = None


def make_module(pl: Any, knobs: Knobs) -> Any:
    """A LightningModule of package ``pl`` with dropout and random validation."""

    class Net(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)  # type: ignore[no-any-return]

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if knobs.fail_at_step is not None and self.global_step == knobs.fail_at_step:
                raise RuntimeError("boom")
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            if knobs.draw_in_on_train_batch_end:
                torch.rand(3)

        def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            jitter = torch.rand(()) + torch.rand((), device=self.device) + float(np.random.rand()) + random.random()
            loss = torch.nn.functional.mse_loss(self(x), y) + 0 * jitter.to(x.device)
            self.log("val_loss", loss)
            return loss

        def on_validation_end(self) -> None:
            if knobs.draw_in_on_validation_end:
                torch.rand(3)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

        def train_dataloader(self) -> DataLoader[Any]:
            return DataLoader(
                NoisyDataset(32, seed=0),
                batch_size=8,
                shuffle=True,
                num_workers=knobs.workers,
                persistent_workers=knobs.workers > 0,
            )

    if knobs.val_dataloader:

        def val_dataloader(self: Any) -> DataLoader[Any]:
            dataset: Dataset[Any] = NoisyDataset(16, seed=1)
            if knobs.draw_in_val_dataloader:  # a random subset, from the global generator
                dataset = Subset(dataset, torch.randperm(16)[:12].tolist())
            return DataLoader(
                dataset,
                batch_size=4,
                shuffle=True,
                num_workers=knobs.workers,
                persistent_workers=knobs.workers > 0,
            )

        Net.val_dataloader = val_dataloader
    else:
        del Net.validation_step
    return Net()


def trainer_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_epochs": EPOCHS,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 2,
    }
    return {**kwargs, **overrides}


Result = tuple[dict[str, torch.Tensor], rng_fork.RngState]


def fit(
    package: str, *, validate: bool, callbacks: list[Any] | None = None, knobs: Knobs = Knobs(), **kwargs: Any
) -> Result:
    """A seeded fit; returns the final parameters and every global RNG's state."""
    pl = importlib.import_module(package)
    pl.seed_everything(SEED, verbose=False)
    model = make_module(pl, knobs)
    if not validate:
        kwargs["limit_val_batches"] = 0
    trainer = pl.Trainer(**trainer_kwargs(callbacks=callbacks or [], **kwargs))
    trainer.fit(model)
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return params, rng_fork.get_rng_state()


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


_BASELINES: dict[tuple[str, Knobs, str], Result] = {}


def baseline(package: str, knobs: Knobs = Knobs(), **kwargs: Any) -> Result:
    """The fit without validation and without callback, with the same other
    Trainer arguments (some change training by themselves: with
    ``reload_dataloaders_every_n_epochs`` Lightning creates the train iterator
    twice per epoch)."""
    key = (package, knobs, repr(sorted(kwargs.items())))
    if key not in _BASELINES:
        _BASELINES[key] = fit(package, validate=False, knobs=knobs, **kwargs)
    return _BASELINES[key]


# Trainer arguments of the fits with validation; the baseline gets the same
# plus ``limit_val_batches=0``.
SCHEDULES: dict[str, dict[str, Any]] = {
    "every_epoch": {},
    "half_epoch": {"val_check_interval": 0.5},
    "no_sanity": {"num_sanity_val_steps": 0},
    "reload_every_epoch": {"reload_dataloaders_every_n_epochs": 1},
}


@pytest.fixture(params=PACKAGES)
def package(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# Without the callback, or with the obvious hooks, validation changes training.


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["every_epoch", "half_epoch"])
def test_validation_changes_training_without_callback(package: str, schedule: str) -> None:
    params, state = fit(package, validate=True, **SCHEDULES[schedule])
    base_params, base_state = baseline(package, **SCHEDULES[schedule])
    assert not same(params, base_params)
    assert state != base_state


@pytest.mark.slow
def test_saving_in_on_validation_start_is_too_late(package: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The validation iterator draws its base seed before ``on_validation_start``."""
    pl = importlib.import_module(package)
    events: list[str] = []
    create_iterator = dataloader._BaseDataLoaderIter.__init__

    def traced(self: Any, loader: DataLoader[Any]) -> None:
        create_iterator(self, loader)
        events.append(f"iter({len(loader.dataset)})")  # type: ignore[arg-type]

    monkeypatch.setattr(dataloader._BaseDataLoaderIter, "__init__", traced)

    class Naive(pl.Callback):  # type: ignore[misc, name-defined]
        def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
            events.append("on_validation_start")
            self.state = rng_fork.get_rng_state()

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            rng_fork.set_rng_state(self.state)

    params, _ = fit(package, validate=True, callbacks=[Naive()])
    assert not same(params, baseline(package)[0])
    starts = [i for i, event in enumerate(events) if event == "on_validation_start"]
    assert len(starts) == 1 + EPOCHS  # the sanity check, then one per epoch
    assert all(events[i - 1] == "iter(16)" for i in starts)  # the val loader's iterator came first


# With the callback, the fit is bit-identical to the fit without validation.


@pytest.mark.slow
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_callback_makes_fit_independent_of_validation(package: str, schedule: str) -> None:
    callback = IsolateRng()
    params, state = fit(package, validate=True, callbacks=[callback], **SCHEDULES[schedule])
    base_params, base_state = baseline(package, **SCHEDULES[schedule])
    assert same(params, base_params)
    assert state == base_state
    runs = EPOCHS * (2 if schedule == "half_epoch" else 1) + (0 if schedule == "no_sanity" else 1)
    assert callback.restores >= runs
    assert callback.active_mode is None  # torn down


@pytest.mark.slow
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_hooks_mode_makes_fit_independent_of_validation(schedule: str) -> None:
    callback = IsolateRng(mode="hooks")
    params, state = fit(PACKAGES[0], validate=True, callbacks=[callback], **SCHEDULES[schedule])
    base_params, base_state = baseline(PACKAGES[0], **SCHEDULES[schedule])
    assert same(params, base_params)
    assert state == base_state
    assert callback.active_mode is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "where, kwargs",
    [
        ("on_validation_end", {}),  # the LightningModule's runs after the callbacks'
        # Without a sanity check, val_dataloader() is first called from
        # FitLoop.on_run_start, outside any validation run.
        ("val_dataloader", {"num_sanity_val_steps": 0}),
        ("on_train_batch_end", {}),  # between the callbacks' on_train_batch_end and validation
    ],
)
def test_only_loop_mode_isolates_draws_outside_the_hooks(where: str, kwargs: dict[str, Any]) -> None:
    knobs = Knobs(**{f"draw_in_{where}": True})
    base, _ = baseline(PACKAGES[0], knobs, **kwargs)
    params, _ = fit(PACKAGES[0], validate=True, callbacks=[IsolateRng()], knobs=knobs, **kwargs)
    assert same(params, base)
    params, _ = fit(PACKAGES[0], validate=True, callbacks=[IsolateRng(mode="hooks")], knobs=knobs, **kwargs)
    assert not same(params, base)


@pytest.mark.slow
def test_fit_without_val_dataloader() -> None:
    """No val dataloader at all trains as ``limit_val_batches=0`` does, with or without the callback."""
    knobs = Knobs(val_dataloader=False)
    base = baseline(PACKAGES[0])[0]
    assert same(fit(PACKAGES[0], validate=True, knobs=knobs)[0], base)
    assert same(fit(PACKAGES[0], validate=True, callbacks=[IsolateRng()], knobs=knobs)[0], base)


@pytest.mark.slow
def test_callback_with_persistent_workers() -> None:
    """Worker processes: the loaders' base seeds are drawn once, their samplers' every epoch."""
    knobs = Knobs(workers=1)
    base, _ = baseline(PACKAGES[0], knobs)
    params, _ = fit(PACKAGES[0], validate=True, knobs=knobs, val_check_interval=0.5)
    assert not same(params, base)
    params, _ = fit(PACKAGES[0], validate=True, callbacks=[IsolateRng()], knobs=knobs, val_check_interval=0.5)
    assert same(params, base)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["python", "numpy", "torch"])
def test_every_source_matters(source: str, hide_source: Callable[[str], None]) -> None:
    """A fork blind to any one source is not enough: the test model draws from each."""
    base, _ = baseline(PACKAGES[0], val_check_interval=0.5)
    hide_source(source)
    params, _ = fit(PACKAGES[0], validate=True, callbacks=[IsolateRng()], val_check_interval=0.5)
    assert not same(params, base)


@pytest.fixture
def restore_torch_flags() -> Iterator[None]:
    """``Trainer(deterministic=True)`` changes process-wide settings: put them back after the test."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark = saved[2]
    if saved[3] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[3]


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.usefixtures("restore_torch_flags")
def test_callback_on_cuda(package: str, hide_source: Callable[[str], None]) -> None:
    """Dropout and ``validation_step`` draw from the CUDA generator too."""
    kwargs: dict[str, Any] = {"accelerator": "gpu", "deterministic": True, "val_check_interval": 0.5}
    base, base_state = fit(package, validate=False, **kwargs)
    params, _ = fit(package, validate=True, **kwargs)
    assert not same(params, base)
    params, state = fit(package, validate=True, callbacks=[IsolateRng()], **kwargs)
    assert same(params, base)
    assert state == base_state and "cuda:0" in state.names
    hide_source("cuda")
    params, _ = fit(package, validate=True, callbacks=[IsolateRng()], **kwargs)
    assert not same(params, base)


# Plumbing.


@pytest.mark.slow
def test_wrappers_removed_after_fit_and_after_exception(package: str) -> None:
    pl = importlib.import_module(package)
    callback = IsolateRng()
    trainer = pl.Trainer(**trainer_kwargs(max_epochs=1, callbacks=[callback]))
    val_loop = trainer.fit_loop.epoch_loop.val_loop
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(make_module(pl, Knobs(fail_at_step=2)))
    assert "run" not in vars(val_loop) and "setup_data" not in vars(val_loop)
    assert callback.active_mode is None
    trainer.fit(make_module(pl, Knobs()))  # the same trainer and callback fit again
    assert "run" not in vars(val_loop) and "setup_data" not in vars(val_loop)
    assert callback.restores > 0


def test_instances_are_callbacks_of_each_imported_package() -> None:
    callback = IsolateRng(mode="hooks")
    for name in PACKAGES:
        assert isinstance(callback, importlib.import_module(name).Callback)
    assert isinstance(callback, IsolateRng) and type(callback) is type(IsolateRng())
    assert type(callback).__qualname__ == "IsolateRng" and repr(callback) == "IsolateRng(mode='hooks')"

    class Custom(IsolateRng):
        pass

    custom = Custom()
    assert isinstance(custom, Custom) and isinstance(custom, importlib.import_module(PACKAGES[0]).Callback)


def test_pickle_and_deepcopy() -> None:
    callback = IsolateRng(mode="hooks")
    callback.restores = 3
    for clone in (pickle.loads(pickle.dumps(callback)), copy.deepcopy(callback)):
        assert type(clone) is type(callback)
        assert (clone.mode, clone.restores, clone.active_mode) == ("hooks", 3, None)


def test_bad_mode() -> None:
    with pytest.raises(ValueError, match="'loop' or 'hooks'"):
        IsolateRng(mode="nope")  # type: ignore[arg-type]


def test_one_callback_per_trainer_and_setup_only_for_fit() -> None:
    pl = importlib.import_module(PACKAGES[0])
    trainer = pl.Trainer(**trainer_kwargs())
    val_loop = trainer.fit_loop.epoch_loop.val_loop
    first, second = IsolateRng(), IsolateRng()
    first.setup(trainer, None, "validate")
    assert first.active_mode is None and "run" not in vars(val_loop)
    first.setup(trainer, None, "fit")
    first.setup(trainer, None, "fit")  # again, as after a fit that raised: no double wrapping
    assert first.active_mode == "loop" and "run" in vars(val_loop)
    with pytest.raises(RuntimeError, match="already wrapped"):
        second.setup(trainer, None, "fit")
    first.teardown(trainer, None, "fit")
    assert "run" not in vars(val_loop) and "setup_data" not in vars(val_loop)


def test_falls_back_to_hooks_when_the_loop_has_another_shape() -> None:
    callback = IsolateRng()
    with pytest.warns(RuntimeWarning, match="falling back to mode='hooks'"):
        callback.setup(types.SimpleNamespace(fit_loop=None), None, "fit")
    assert callback.active_mode == "hooks"
    callback.teardown(None, None, "fit")
    assert callback.active_mode is None


def test_import_without_lightning_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("lightning", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # find_spec then finds nothing
    monkeypatch.delitem(sys.modules, "rng_fork.integrations.lightning")
    with pytest.raises(ImportError, match="pip install lightning"):
        importlib.import_module("rng_fork.integrations.lightning")


@pytest.mark.skipif(not _installed("pytorch_lightning"), reason="needs pytorch_lightning")
def test_binds_only_to_the_imported_package(monkeypatch: pytest.MonkeyPatch) -> None:
    lightning_pytorch, pytorch_lightning = map(importlib.import_module, ["lightning.pytorch", "pytorch_lightning"])
    monkeypatch.delitem(sys.modules, "lightning.pytorch")  # as if only pytorch_lightning were imported
    callback = IsolateRng()
    assert isinstance(callback, pytorch_lightning.Callback)
    assert not isinstance(callback, lightning_pytorch.Callback)
    trainer = pytorch_lightning.Trainer(**trainer_kwargs(callbacks=callback))  # not a list: needs isinstance
    assert callback in trainer.callbacks


# A fresh interpreter: what importing rng_fork and the integration imports, and
# which package an instance made before importing Lightning binds to.
FRESH = """
    import json, sys
    lightning_modules = lambda: sorted(m for m in sys.modules if m.startswith(("lightning", "pytorch_lightning")))
    import rng_fork
    after_rng_fork = lightning_modules()
    from rng_fork.integrations.lightning import IsolateRng
    after_integration = lightning_modules()
    callback = IsolateRng()
    import lightning.pytorch as pl
    print(json.dumps({
        "after_rng_fork": after_rng_fork,
        "after_integration": after_integration,
        "is_callback": isinstance(callback, pl.Callback),
        "pytorch_lightning_imported": "pytorch_lightning" in sys.modules,
    }))
"""


@pytest.mark.slow
def test_imports_lightning_only_when_an_instance_needs_it() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", textwrap.dedent(FRESH)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "after_rng_fork": [],
        "after_integration": [],
        "is_callback": True,
        "pytorch_lightning_imported": False,
    }
