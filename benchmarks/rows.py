"""The benchmark's rows: one statement each, with the names it needs and the context it runs in.

A row is timed as the cost of one execution of its statement (for a context
manager: constructing it, entering and leaving an empty block). The same rows
serve the wall-clock run and the instruction counts, so both measure the same
statements.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

import rng_fork
from rng_fork import _interrupts

from . import standin

REFERENCE = "torch.fork_rng"
"""The row the CPU table's ratios are taken against."""

NOT_INSTALLED = "not installed"

STANDIN_DEVICES = 8
"""Devices of the stand-in backend: the count the per-device target is set at."""

MLP = (64, 256, 256, 10)
"""The training step's MLP: layer widths, with dropout after each hidden layer."""


@dataclass
class Row:
    """One statement, what it needs, and (once measured) its samples and instruction count."""

    key: str
    name: str
    stmt: str
    namespace: dict[str, Any] = field(default_factory=dict)
    around: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
    """The context a batch of executions runs in, entered and left outside any measurement."""
    status: str = "ok"
    note: str = ""
    callgrind_n: int = 2000
    """Executions counted under callgrind (fewer for slow statements: callgrind is ~50x slower)."""
    n: int = 0
    samples: list[float] = field(default_factory=list)
    """Microseconds per execution, one per round."""
    instructions: float | None = None
    """Instructions per execution, from callgrind (``--instructions``)."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def min_us(self) -> float | None:
        return min(self.samples) if self.samples else None

    def median_us(self) -> float | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def missing(key: str, name: str, status: str = NOT_INSTALLED) -> Row:
    """A row that cannot be measured here: listed with its reason, never timed."""
    return Row(key, name, "pass", status=status)


def empty_with(call: str) -> str:
    """An empty ``with`` block: construct, enter and exit a context manager."""
    return f"with {call}:\n    pass"


def find_isolate_rng() -> tuple[Callable[..., Any] | None, str | None]:
    """Lightning's ``isolate_rng`` and the package it came from, or ``(None, None)``."""
    try:
        import lightning
        from lightning.pytorch.utilities.seed import isolate_rng
    except ImportError:
        pass
    else:
        return isolate_rng, f"lightning {lightning.__version__}"
    try:
        import pytorch_lightning
        from pytorch_lightning.utilities.seed import isolate_rng
    except ImportError:
        return None, None
    return isolate_rng, f"pytorch_lightning {pytorch_lightning.__version__}"


def lightning_row(isolate_rng: Callable[..., Any] | None, *, gpu: bool = False) -> Row:
    key = "lightning.isolate_rng"
    if isolate_rng is None:
        return missing(key, "lightning isolate_rng()")
    # On the CPU run the default include_cuda=True would initialize CUDA in the middle of it.
    call = "isolate_rng(include_cuda=False)" if torch.cuda.is_available() and not gpu else "isolate_rng()"
    return Row(key, f"lightning {call}", empty_with(call), {"isolate_rng": isolate_rng}, callgrind_n=200)


RAW_ALL = """\
_a = random.getstate(); _b = np.random.get_state(); _c = torch.get_rng_state()
random.setstate(_a); np.random.set_state(_b); torch.set_rng_state(_c)"""

MODULES = {"random": random, "np": np, "torch": torch, "rng_fork": rng_fork}


def sigint_note() -> str:
    """How rng_fork's SIGINT handler goes in and out here, after a first block has looked for the slot."""
    with rng_fork.fork_rng():
        pass
    slot = _interrupts.slot_info().startswith("active")
    how = "the verified slot written in and out" if slot else "two sigaction calls"
    return f"{how}, paid by every outermost rng_fork block"


def fork_rows(isolate_rng: Callable[..., Any] | None) -> list[Row]:
    """Forks of the default sources, their peers (Lightning's if ``isolate_rng``) and the official APIs' floors."""
    generator = torch.Generator().manual_seed(0)
    with_generator = {**MODULES, "g": generator}
    return [
        Row("rng_fork.fork_rng", "rng_fork.fork_rng()", empty_with("rng_fork.fork_rng()"), MODULES),
        Row("rng_fork.fork_rng.no_devices", "rng_fork.fork_rng(devices=[])",
            empty_with("rng_fork.fork_rng(devices=[])"), MODULES, note="no lazy-CUDA guard"),
        Row(REFERENCE, "torch.random.fork_rng(devices=[])", empty_with("torch.random.fork_rng(devices=[])"), MODULES),
        lightning_row(isolate_rng),
        Row("rng_fork.fork_rng.generator", "rng_fork.fork_rng(generators=[g])",
            empty_with("rng_fork.fork_rng(generators=[g])"), with_generator, note="g: a CPU torch.Generator"),
        Row("raw.generator", "raw get+set: g (a CPU torch.Generator)", "g.set_state(g.get_state())", with_generator),
        Row("raw.all", "raw get+set: random + numpy + torch", RAW_ALL, MODULES, callgrind_n=200),
        Row("raw.python", "raw get+set: random", "random.setstate(random.getstate())", MODULES, callgrind_n=200),
        Row("raw.numpy", "raw get+set: np.random", "np.random.set_state(np.random.get_state())", MODULES,
            callgrind_n=200),
        Row("raw.torch", "raw get+set: torch CPU", "torch.set_rng_state(torch.get_rng_state())", MODULES),
        Row("rng_fork.sigint_shield", "rng_fork's SIGINT handler in and out",
            "unshield(shield())", {"shield": _interrupts.shield, "unshield": _interrupts.unshield},
            note=sigint_note()),
        Row("rng_fork.get_rng_state", "rng_fork.get_rng_state()", "rng_fork.get_rng_state()", MODULES),
        Row("rng_fork.set_rng_state", "rng_fork.set_rng_state(state)", "rng_fork.set_rng_state(state)",
            {**MODULES, "state": rng_fork.get_rng_state()}),
    ]


def isolation_rows() -> list[Row]:
    """``@isolated`` functions and generators beside their bare twins, and ``with stream``."""

    def plain() -> None:
        pass

    def endless() -> Iterator[None]:
        while True:
            yield

    isolated_plain = rng_fork.isolated(plain)
    isolated_endless = rng_fork.isolated(endless)
    stream = rng_fork.RngStream(seed=0)
    return [
        Row("bare.call", "bare call f()", "f()", {"f": plain}),
        Row("isolated.call", "@isolated call f()", "f()", {"f": isolated_plain}),
        Row("bare.gen_step", "bare generator step next(g)", "next(g)", {"g": endless()}),
        Row("isolated.gen_step", "@isolated generator step next(g)", "next(g)", {"g": isolated_endless()}),
        Row("RngStream.enter_exit", "with stream: (stream = RngStream(seed=0))", empty_with("stream"),
            {"stream": stream}),
    ]


def training_step_rows() -> list[Row]:
    """One SGD step of a small MLP with dropout on a batch of 64, plain and inside ``rng_fork.trace()``.

    The trace is entered before a batch of steps and left after them, so the
    rows compare the steps themselves: what tracing costs a training loop.
    """
    layers: list[torch.nn.Module] = []
    for width, next_width in itertools.pairwise(MLP[:-1]):
        layers += [torch.nn.Linear(width, next_width), torch.nn.ReLU(), torch.nn.Dropout(0.2)]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(MLP[-2], MLP[-1]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)  # the data is the same in every run, and draws nothing global
    x, y = torch.randn(64, MLP[0], generator=generator), torch.randint(0, MLP[-1], (64,), generator=generator)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    widths = "-".join(map(str, MLP))
    namespace = {"step": step}
    return [
        Row("train.step", f"MLP {widths} step (dropout, batch 64)", "step()", namespace, callgrind_n=20),
        Row("train.step.traced", "the same step inside rng_fork.trace()", "step()", namespace,
            around=rng_fork.trace, callgrind_n=20),
    ]


def standin_rows(count: int = STANDIN_DEVICES) -> list[Row]:
    """Forks of 1 and ``count`` stand-in devices (see standin.py), by torch and by rng_fork."""
    backend = standin.devices(count)
    rows = []
    for n in (1, count):
        torch_call = f"torch.random.fork_rng(devices=range({n}), device_type={standin.DEVICE_TYPE!r})"
        rng_fork_call = f"rng_fork.fork_rng(devices=range({n}))"
        rows += [
            Row(f"standin.torch.{n}", f"stand-in devices: torch.random.fork_rng(devices=range({n}))",
                empty_with(torch_call), MODULES),
            Row(f"standin.rng_fork.{n}", f"stand-in devices: {rng_fork_call}", empty_with(rng_fork_call), MODULES,
                around=partial(standin.registered, backend, range(n))),
        ]
    return rows


def cpu_rows(wanted: Callable[[str], bool] = lambda key: True) -> tuple[list[Row], str | None]:
    """Every CPU row ``wanted`` keeps, and the Lightning package found (imported only if wanted)."""
    isolate_rng, lightning = find_isolate_rng() if wanted("lightning.isolate_rng") else (None, "not looked for")
    rows = fork_rows(isolate_rng) + isolation_rows() + training_step_rows() + standin_rows()
    return [row for row in rows if wanted(row.key)], lightning


def gpu_rows(isolate_rng: Callable[..., Any] | None, count: int) -> list[Row]:
    """The CUDA rows, for an initialized runtime with ``count`` devices."""
    modules = {"torch": torch, "rng_fork": rng_fork}
    rows = [Row("rng_fork.fork_rng", "rng_fork.fork_rng() (all devices)", empty_with("rng_fork.fork_rng()"), modules)]
    for n in range(1, count + 1):
        for who, call in (("torch", "torch.random.fork_rng"), ("rng_fork", "rng_fork.fork_rng")):
            rows.append(Row(f"{who}.fork_rng.cuda{n}", f"{call}(devices=range({n}))",
                            empty_with(f"{call}(devices=range({n}))"), modules))
    rows.append(lightning_row(isolate_rng, gpu=True))
    rows.append(Row("raw.torch", "raw get+set: torch CPU", "torch.set_rng_state(torch.get_rng_state())", modules))
    for i in range(count):
        rows += [
            Row(f"raw.cuda{i}", f"raw get+set: torch.cuda (device {i})",
                f"torch.cuda.set_rng_state(torch.cuda.get_rng_state({i}), {i})", modules),
            Row(f"raw.cuda{i}.generator", f"raw get+set: default_generators[{i}]", "g.set_state(g.get_state())",
                {"g": torch.cuda.default_generators[i]}),
        ]
    return rows
