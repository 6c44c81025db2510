"""``python -m rng_fork demo``: evaluation changes training, unless it runs inside ``fork_rng()``.

The demo trains one small model three times from the same seed:

1. without evaluation;
2. evaluating after every epoch, plainly;
3. evaluating after every epoch inside ``fork_rng()``.

Training uses dropout, random augmentation and a shuffled ``DataLoader`` with
worker processes; evaluation iterates a test ``DataLoader`` and uses
Monte-Carlo dropout, so it draws from torch's global generator. Run 2 therefore
shuffles and draws differently from run 1 from the second epoch on; run 3 must
reproduce run 1 bit for bit, and the exit status says whether it did. Run 2's
evaluations run under ``rng_fork.trace()``, which changes none of its numbers,
and the demo prints which of their lines drew from which generator.

Example::

    $ python -m rng_fork demo --epochs 3 --workers 0 --plot curves.png
    $ echo $?     # 0: run 3 reproduced run 1 exactly
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ._checks import check_seed
from .fork import fork_rng
from .state import seed_all
from .trace import trace

FEATURES = 16
CLASSES = 3
TRAIN_SIZE = 1024
TEST_SIZE = 256
BATCH_SIZE = 64
LEARNING_RATE = 0.2
MC_SAMPLES = 4
"""Stochastic forward passes per test batch: Monte-Carlo dropout draws fresh masks each time."""

RUNS = ("1: no evaluation", "2: plain evaluation", "3: evaluation in fork_rng()")


# --- data and model ----------------------------------------------------------


class JitteredDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Fixed samples plus Gaussian jitter drawn at every access, like a random augmentation.

    The jitter comes from torch's generator in whichever process loads the item:
    a DataLoader worker, seeded from the loader's base seed, or the main process.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, jitter: float) -> None:
        self.features = features
        self.labels = labels
        self.jitter = jitter

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features[index]
        return features + self.jitter * torch.randn(features.shape), self.labels[index]


def make_datasets(seed: int) -> tuple[JitteredDataset, JitteredDataset]:
    """Training and test sets labelled by a random two-layer teacher.

    They come from a private generator, so they are the same in every run and
    drawing them changes no global state.
    """
    gen = torch.Generator().manual_seed(seed)
    teacher = (torch.randn(FEATURES, 32, generator=gen), torch.randn(32, CLASSES, generator=gen))

    def sample(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.randn(count, FEATURES, generator=gen)
        logits = torch.tanh(features @ teacher[0]) @ teacher[1]
        return features, logits.argmax(dim=1)

    return JitteredDataset(*sample(TRAIN_SIZE), jitter=0.3), JitteredDataset(*sample(TEST_SIZE), jitter=0.3)


def make_model() -> nn.Module:
    """A small MLP with dropout; its initial weights come from torch's global generator."""
    return nn.Sequential(
        nn.Linear(FEATURES, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(64, CLASSES),
    )


# --- one run -----------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What one training run produced: mean training loss per epoch and the final weights."""

    label: str
    losses: list[float]
    weights: dict[str, torch.Tensor]

    def first_difference(self, other: Run) -> int | None:
        """The first epoch (from 1) whose loss differs from ``other``'s as an exact float, or None."""
        pairs = zip(self.losses, other.losses, strict=True)
        return next((epoch for epoch, (mine, theirs) in enumerate(pairs, start=1) if mine != theirs), None)

    def same_weights(self, other: Run) -> bool:
        """Whether every final weight equals ``other``'s exactly (``torch.equal``)."""
        return all(torch.equal(tensor, other.weights[name]) for name, tensor in self.weights.items())

    def same_as(self, other: Run) -> bool:
        """Bit for bit: every epoch's loss and every final weight."""
        return self.first_difference(other) is None and self.same_weights(other)


def sgd_step(model: nn.Module, loss: torch.Tensor) -> None:
    """One plain SGD step on ``loss``.

    Written out because ``torch.optim`` imports ``torch._dynamo``, which takes
    longer than all of the demo's training.
    """
    parameters = list(model.parameters())
    gradients = torch.autograd.grad(loss, parameters)
    with torch.no_grad():
        for parameter, gradient in zip(parameters, gradients, strict=True):
            parameter.add_(gradient, alpha=-LEARNING_RATE)


def evaluate(model: nn.Module, loader: DataLoader[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Test loss with Monte-Carlo dropout: deliberately random, like many real evaluations."""
    model.train()  # dropout stays on: each pass samples other masks
    total, count = 0.0, 0
    with torch.no_grad():
        for features, labels in loader:
            probs = torch.stack([model(features).softmax(dim=1) for _ in range(MC_SAMPLES)]).mean(dim=0)
            total += float(nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum"))
            count += len(labels)
    return total / count


def train(
    *,
    epochs: int,
    seed: int,
    workers: int,
    evaluation: Callable[[], AbstractContextManager[Any]] | None,
    label: str,
    on_epoch: Callable[[float], None] = lambda loss: None,
) -> Run:
    """Train from ``seed``; after each epoch evaluate inside ``evaluation()``, if given."""
    seed_all(seed)
    train_set, test_set = make_datasets(seed)
    model = make_model()
    # Persistent workers start once per run instead of once per epoch; the
    # shuffle still draws from the global generator every epoch.
    persistent = workers > 0
    train_loader = DataLoader(
        train_set, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers, persistent_workers=persistent
    )
    test_loader = DataLoader(test_set, batch_size=128, num_workers=workers, persistent_workers=persistent)
    losses: list[float] = []
    for _ in range(epochs):
        model.train()
        total = 0.0
        for features, labels in train_loader:
            loss = nn.functional.cross_entropy(model(features), labels)
            sgd_step(model, loss)
            total += loss.item()
        losses.append(total / len(train_loader))
        if evaluation is not None:
            with evaluation():
                evaluate(model, test_loader)
        on_epoch(losses[-1])
    weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    return Run(label, losses, weights)


# --- progress bar, table, plot -----------------------------------------------


class Progress(Protocol):
    """The part of a tqdm bar the demo uses."""

    def set_description(self, desc: str) -> None: ...
    def update(self, n: int = 1) -> Any: ...
    def close(self) -> None: ...


class _NoProgress:
    """Stands in for the bar when tqdm is not installed."""

    def set_description(self, desc: str) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int) -> Progress:
    """A tqdm bar on stderr (shown only on a terminal), or nothing if tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoProgress()
    bar: Progress = tqdm(total=total, unit="epoch", leave=False, disable=None, file=sys.stderr)
    return bar


def format_table(runs: Sequence[Run]) -> str:
    """Per-epoch losses of the three runs, and whether runs 2 and 3 match run 1 exactly."""
    reference, plain, forked = runs
    widths = (7, *(max(len(run.label), 14) for run in runs), 8, 8)

    def row(*cells: str) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    def verdict(same: bool) -> str:
        return "same" if same else "DIFFERS"

    lines = [row("epoch", *(run.label for run in runs), "2 = 1?", "3 = 1?"), row(*("-" * width for width in widths))]
    for epoch, losses in enumerate(zip(reference.losses, plain.losses, forked.losses, strict=True), start=1):
        first, second, third = losses
        cells = (f"{loss:.10f}" for loss in losses)
        lines.append(row(str(epoch), *cells, verdict(second == first), verdict(third == first)))
    weights = (verdict(plain.same_weights(reference)), verdict(forked.same_weights(reference)))
    lines.append(row("weights", "", "", "", *weights))
    return "\n".join(lines)


def matplotlib_figure() -> Any:
    """matplotlib's ``Figure`` class, or None if matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def save_plot(runs: Sequence[Run], path: Path) -> None:
    """Write an 800x450 PNG: the three loss curves, and each run's difference from run 1."""
    figure_class = matplotlib_figure()
    if figure_class is None:
        raise ImportError(f"plotting needs matplotlib: {INSTALL_PLOTTING}")
    reference = runs[0].losses
    epochs = list(range(1, len(reference) + 1))
    # A bare Figure, not pyplot: no GUI backend, no global figure state.
    figure = figure_class(figsize=(8, 4.5), dpi=100, layout="constrained")
    curves, gaps = figure.subplots(1, 2)
    # Runs 1 and 3 coincide: run 1 is drawn wide and pale so run 3 shows on top of it.
    styles: tuple[dict[str, Any], ...] = (
        {"color": "C0", "linewidth": 4, "alpha": 0.5},
        {"color": "C3", "marker": "s"},
        {"color": "C2", "marker": "x", "linestyle": "--"},
    )
    for run, style in zip(runs, styles, strict=True):
        curves.plot(epochs, run.losses, label=run.label, **style)
        gaps.plot(epochs, [loss - ref for loss, ref in zip(run.losses, reference, strict=True)], **style)
    curves.set(title="Mean training loss per epoch", xlabel="epoch", ylabel="loss")
    gaps.set(title="Difference from run 1", xlabel="epoch", ylabel="loss - loss of run 1")
    for axes in (curves, gaps):
        axes.set_xticks(epochs)
        axes.grid(alpha=0.3)
    curves.legend()
    figure.suptitle("Evaluation inside fork_rng() leaves training bit for bit unchanged")
    figure.savefig(path)


# --- command line ------------------------------------------------------------


def _seed(text: str) -> int:
    try:
        seed = check_seed(int(text), allow_none=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc) if "[0, 2**32)" in str(exc) else f"not an int: {text!r}") from None
    assert seed is not None
    return seed


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an int: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, on the ``demo`` subcommand's parser."""
    parser.add_argument("--epochs", type=_count(1), default=8, help="epochs per run (default: %(default)s)")
    parser.add_argument("--seed", type=_seed, default=0, help="seed of all three runs (default: %(default)s)")
    parser.add_argument(
        "--workers", type=_count(0), default=2, help="DataLoader worker processes (default: %(default)s)"
    )
    parser.add_argument(
        "--plot", type=_plot_path, metavar="PATH",
        help="write the loss curves to PATH, a .png (or another format matplotlib writes, by its extension)",
    )


INSTALL_PLOTTING = "pip install matplotlib (or, in a checkout of rng_fork: pip install -e '.[demo]')"


def _plot_path(text: str) -> Path:
    """``--plot``'s argument: a file matplotlib can write, checked before any training starts."""
    if not text:
        raise argparse.ArgumentTypeError("needs a file name, such as demo.png")
    if matplotlib_figure() is None:
        raise argparse.ArgumentTypeError(
            f"needs matplotlib, which is not installed; install it with: {INSTALL_PLOTTING}"
        )
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(text)
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: that is a folder; give a file name such as {path / 'demo.png'}")
    if path.suffix[1:].lower() not in formats:
        given = f"a {path.suffix} file" if path.suffix else "a file without an extension"
        raise argparse.ArgumentTypeError(
            f"{text}: matplotlib cannot write {given}; end the name with one of "
            f"{', '.join('.' + name for name in sorted(formats))}"
        )
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: the folder {path.parent} does not exist")
    # Tried, not inferred from permissions: root may write where os.access says yes and the
    # file system says no (/proc), and a full disk shows only here.
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text}: cannot be written ({exc.strerror or exc})") from None
    if not existed:
        path.unlink()
    return path


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 if run 3 reproduced run 1 bit for bit, 1 if not (``--plot`` was checked by the parser)."""
    print(f"rng_fork demo: {args.epochs} epoch(s) per run, seed {args.seed}, {args.workers} DataLoader worker(s)")
    print(
        f"training on {TRAIN_SIZE} samples with dropout, random jitter and shuffling; "
        f"evaluation: Monte-Carlo dropout on {TEST_SIZE} test samples"
    )
    tracer = trace()
    runs = train_three_runs(args.epochs, args.seed, args.workers, tracer=tracer)
    print()
    print("mean training loss per epoch ('same' = equal bit for bit to run 1):")
    print(format_table(runs))
    print()
    reference, plain, forked = runs
    print(_how_plain_differs(reference, plain))
    print()
    print("what run 2's evaluations drew, all epochs together (rng_fork.trace):")
    print(tracer.report())
    print()
    if args.plot is not None:
        save_plot(runs, args.plot)
        print(f"plot written to {args.plot}")
    if forked.same_as(reference):
        print("OK: run 3 reproduced run 1 bit for bit: evaluating inside fork_rng() did not change training.")
        return 0
    print("FAILED: run 3 did not reproduce run 1: the evaluation inside fork_rng() changed training.", file=sys.stderr)
    return 1


def train_three_runs(epochs: int, seed: int, workers: int, *, tracer: trace | None = None) -> list[Run]:
    """Runs 1, 2 and 3, with a progress bar over all their epochs; run 2 evaluates inside ``tracer``, if given."""
    plain: Callable[[], AbstractContextManager[Any]] = nullcontext if tracer is None else lambda: tracer
    evaluations: tuple[Callable[[], AbstractContextManager[Any]] | None, ...] = (None, plain, _forked)
    bar = progress_bar(total=len(RUNS) * epochs)
    threads = torch.get_num_threads()
    # The model is tiny: more threads only contend with each other and with the
    # workers (several times slower on 2 busy cores); results stay exact either way.
    torch.set_num_threads(1)
    try:
        runs = []
        for label, evaluation in zip(RUNS, evaluations, strict=True):
            bar.set_description(f"run {label}")
            runs.append(
                train(epochs=epochs, seed=seed, workers=workers, evaluation=evaluation, label=label,
                      on_epoch=lambda loss: bar.update())
            )
        return runs
    finally:
        torch.set_num_threads(threads)
        bar.close()


def _forked() -> AbstractContextManager[Any]:
    return fork_rng()


def _how_plain_differs(reference: Run, plain: Run) -> str:
    epoch = plain.first_difference(reference)
    if epoch is not None:
        return f"run 2 left run 1 at epoch {epoch}: the plain evaluation changed training."
    if not plain.same_weights(reference):
        return "run 2 ended with other weights than run 1: the plain evaluation changed training."
    return "run 2 matched run 1: evaluation runs after each epoch, so its effect shows from --epochs 2 on."
