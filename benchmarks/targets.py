"""Targets: a row's figure against a peer's, measured in the same run, "at most" or "at least" a ratio.

Either side is a row key or a sum of rows with factors, such as
``"1.2*rng_fork.fork_rng + raw.generator"`` or
``"standin.rng_fork.8 - standin.rng_fork.1"`` (what one more device costs).
A target is judged on every measure the run has (wall-clock minimum,
instructions per execution); it is missed when one of them misses it.

Example::

    Target("rng_fork.fork_rng", "torch.fork_rng", at_most=0.9)
    Target.parse("raw.python <= 0.5 * raw.numpy")
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

PASS, MISSED, SKIP = "PASS", "MISSED", "SKIP"

_TERM = re.compile(r"\s*([+-])?\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?([A-Za-z_][\w.]*)\s*")


def terms(expression: str) -> list[tuple[float, str]]:
    """``"a + 2*b - c"`` as ``[(1, "a"), (2, "b"), (-1, "c")]``; ValueError naming what does not parse."""
    found: list[tuple[float, str]] = []
    position = 0
    while position < len(expression):
        match = _TERM.match(expression, position)
        if match is None or match.end() == position or (found and match.group(1) is None):
            raise ValueError(f"cannot read {expression[position:]!r} in {expression!r} (want: a + 2*b - c)")
        sign, factor, key = match.groups()
        found.append(((-1.0 if sign == "-" else 1.0) * float(factor or 1), key))
        position = match.end()
    if not found:
        raise ValueError(f"empty expression {expression!r}")
    return found


def evaluate(expression: str, values: Mapping[str, float | None]) -> float | None:
    """The expression's value, or None when a row in it was not measured."""
    total = 0.0
    for factor, key in terms(expression):
        value = values.get(key)
        if value is None:
            return None
        total += factor * value
    return total


@dataclass(frozen=True)
class Verdict:
    status: str  # PASS, MISSED or SKIP
    ratio: float | None
    why: str = ""


@dataclass(frozen=True)
class Target:
    """``row / peer`` must be at most ``at_most`` (or at least ``at_least``)."""

    row: str
    peer: str
    at_most: float | None = None
    at_least: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if (self.at_most is None) == (self.at_least is None):
            raise ValueError(f"target {self.row} vs {self.peer}: give exactly one of at_most, at_least")
        terms(self.row), terms(self.peer)  # a misspelt expression fails here, not at the end of a run

    @property
    def limit(self) -> float:
        limit = self.at_most if self.at_most is not None else self.at_least
        assert limit is not None
        return limit

    @property
    def title(self) -> str:
        relation = "at most" if self.at_most is not None else "at least"
        return self.name or f"{self.row} {relation} {self.limit:g}x {self.peer}"

    def judge(self, values: Mapping[str, float | None]) -> Verdict:
        mine, theirs = evaluate(self.row, values), evaluate(self.peer, values)
        if mine is None or theirs is None:
            return Verdict(SKIP, None, "not measured")
        if theirs <= 0:
            return Verdict(SKIP, None, f"{self.peer} is {theirs:.3g}, no ratio")
        ratio = mine / theirs
        met = ratio <= self.limit if self.at_most is not None else ratio >= self.limit
        return Verdict(PASS if met else MISSED, ratio)

    @classmethod
    def parse(cls, text: str) -> Target:
        """``"ROW <= FACTOR * PEER"`` or ``"ROW >= FACTOR * PEER"`` (``FACTOR *`` optional; sides may be sums)."""
        for operator in ("<=", ">="):
            if operator in text:
                row, _, right = text.partition(operator)
                break
        else:
            raise ValueError(f"target {text!r}: want ROW <= FACTOR * PEER or ROW >= FACTOR * PEER")
        factor, peer = 1.0, right.strip()
        scaled = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*\*\s*(?:\((.+)\)|([A-Za-z_][\w.]*))", peer)
        if scaled is not None:
            factor, peer = float(scaled.group(1)), (scaled.group(2) or scaled.group(3)).strip()
        if operator == "<=":
            return cls(row.strip(), peer, at_most=factor, name=text.strip())
        return cls(row.strip(), peer, at_least=factor, name=text.strip())


CPU_TARGETS = (
    Target("rng_fork.fork_rng", "torch.fork_rng", at_most=0.9,
           name="fork_rng() at most 0.9x torch.random.fork_rng()"),
    Target("isolated.call", "torch.fork_rng", at_most=0.9,
           name="@isolated call at most 0.9x torch.random.fork_rng()"),
    Target("isolated.gen_step", "torch.fork_rng", at_most=1.6,
           name="@isolated generator step at most 1.6x torch.random.fork_rng()"),
    Target("RngStream.enter_exit", "torch.fork_rng", at_most=1.6,
           name="with RngStream at most 1.6x torch.random.fork_rng()"),
    Target("rng_fork.fork_rng.generator", "1.2*rng_fork.fork_rng + raw.generator", at_most=1.0,
           name="fork_rng(generators=[g]) at most 1.2x fork_rng() + g's own get+set"),
    Target("lightning.isolate_rng", "rng_fork.fork_rng", at_least=15,
           name="lightning isolate_rng() at least 15x fork_rng()"),
    Target("train.step.traced", "train.step", at_most=3.0,
           name="traced training step at most 3x untraced"),
    Target("standin.rng_fork.1", "standin.torch.1", at_most=0.9,
           name="stand-in devices: fork_rng() at most 0.9x torch.random.fork_rng() on 1 device"),
    Target("standin.rng_fork.8 - standin.rng_fork.1", "standin.torch.8 - standin.torch.1", at_most=0.7,
           name="stand-in devices: per device at most 0.7x torch's, at 8 devices"),
)


def gpu_targets(count: int) -> list[Target]:
    """The CUDA targets for ``count`` initialized devices (the per-device one is skipped below 8)."""
    return [
        Target("rng_fork.fork_rng.cuda1", "torch.fork_rng.cuda1", at_most=0.9,
               name="fork_rng(devices=range(1)) at most 0.9x torch.random.fork_rng(devices=range(1))"),
        Target("rng_fork.fork_rng", f"torch.fork_rng.cuda{count}", at_most=0.9,
               name=f"fork_rng() at most 0.9x torch.random.fork_rng(devices=range({count}))"),
        Target("lightning.isolate_rng", "rng_fork.fork_rng", at_least=15,
               name="lightning isolate_rng() at least 15x fork_rng()"),
        Target("rng_fork.fork_rng.cuda8 - rng_fork.fork_rng.cuda1", "torch.fork_rng.cuda8 - torch.fork_rng.cuda1",
               at_most=0.7, name="per device at most 0.7x torch's, at 8 devices (needs 8 GPUs; the CPU run "
               "measures it on stand-in devices)"),
    ]
