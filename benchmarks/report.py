"""What a run prints and writes: the machine, the table, the derived differences, the targets' verdicts."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import rng_fork

from .rows import NOT_INSTALLED, Row
from .targets import MISSED, PASS, SKIP, Target, Verdict, evaluate

DERIVED = (
    ("fork_rng() without its SIGINT handler swap", "rng_fork.fork_rng - rng_fork.sigint_shield", 1),
    ("@isolated call minus bare call", "isolated.call - bare.call", 1),
    ("@isolated generator step minus bare step", "isolated.gen_step - bare.gen_step", 1),
    ("fork_rng(generators=[g]) minus fork_rng()", "rng_fork.fork_rng.generator - rng_fork.fork_rng", 1),
    ("stand-in: rng_fork, each device (8 vs 1)", "standin.rng_fork.8 - standin.rng_fork.1", 7),
    ("stand-in: torch, each device (8 vs 1)", "standin.torch.8 - standin.torch.1", 7),
)
"""Differences worth reading on their own, as (name, expression, divisor)."""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def fast_path() -> list[str]:
    """What ``rng_fork.info()`` says about raw-memory fast paths (keys containing "fast")."""
    return [
        f"{source.get('name', '?')}: {key}={value}"
        for source in rng_fork.info()
        for key, value in source.items()
        if "fast" in str(key).lower()
    ]


def environment(lightning: str | None) -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": np.__version__,
        "lightning": lightning or NOT_INSTALLED,
        "rng_fork": rng_fork.__version__,
        "rng_fork_path": str(Path(rng_fork.__file__).resolve().parent),
        "fast_path": fast_path() or None,
        "RNG_FORK_PORTABLE": os.environ.get("RNG_FORK_PORTABLE"),
    }


def header(env: dict[str, Any], mode: str) -> list[str]:
    usable = env["usable_cores"]
    cores = f"{env['cores']} logical cores" + (f" ({usable} usable)" if usable is not None else "")
    fast = "; ".join(env["fast_path"]) if env["fast_path"] else "not reported by rng_fork.info()"
    portable = env["RNG_FORK_PORTABLE"]
    return [
        f"machine:   {env['cpu']}, {cores}; {env['platform']}",
        f"python:    {env['python']}",
        f"versions:  torch {env['torch']} (CUDA {env['torch_cuda']}), numpy {env['numpy']}, "
        f"lightning: {env['lightning']}",
        f"rng_fork:  {env['rng_fork']} at {env['rng_fork_path']}",
        f"fast path: {fast}; RNG_FORK_PORTABLE={'unset' if portable is None else portable}",
        f"mode:      {mode}",
    ]


def walls(rows: Sequence[Row]) -> dict[str, float | None]:
    return {row.key: row.min_us() for row in rows if row.ok}


def instructions(rows: Sequence[Row]) -> dict[str, float | None]:
    return {row.key: row.instructions for row in rows if row.ok}


def _number(value: float | None, width: int) -> str:
    if value is None:
        return " " * width
    digits = 3 if abs(value) < 1 else 2 if abs(value) < 1000 else 0
    return f"{value:{width}.{digits}f}"


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if value is not None and reference else ""


def table(rows: Sequence[Row], reference: str) -> list[str]:
    counted = any(row.instructions is not None for row in rows)
    ref = next((row for row in rows if row.key == reference and row.ok), None)
    ref_wall = ref.min_us() if ref is not None else None
    ref_instr = ref.instructions if ref is not None else None
    width = max(len(row.name) for row in rows)
    title = f"{'row':<{width}}  {'min us':>9}  {'median us':>9}  {'ratio':>7}"
    if counted:
        title += f"  {'instr':>10}  {'ratio':>7}"
    lines = [
        f"ratio = a row's figure / that of {ref.name if ref else reference + ' (not measured)'}"
        + ("; instr = instructions per execution (callgrind)" if counted else ""),
        "",
        title + f"  {'N/round':>7}",
    ]
    lines.append("-" * len(lines[-1]))
    for row in rows:
        if not row.ok:
            lines.append(f"{row.name:<{width}}  {row.status:>9}")
            continue
        line = (f"{row.name:<{width}}  {_number(row.min_us(), 9)}  {_number(row.median_us(), 9)}  "
                f"{_ratio(row.min_us(), ref_wall):>7}")
        if counted:
            instr = f"{row.instructions:10.0f}" if row.instructions is not None else " " * 10
            line += f"  {instr}  {_ratio(row.instructions, ref_instr):>7}"
        lines.append(line + f"  {row.n:>7}" + (f"  ({row.note})" if row.note else ""))
    return lines


def derived(rows: Sequence[Row]) -> list[dict[str, Any]]:
    wall, instr = walls(rows), instructions(rows)
    medians = {row.key: row.median_us() for row in rows if row.ok}
    found = []
    for name, expression, divisor in DERIVED:
        figures = {measure: evaluate(expression, values) for measure, values in
                   (("min_us", wall), ("median_us", medians), ("instructions", instr))}
        if figures["min_us"] is not None:
            per = {measure: None if value is None else value / divisor for measure, value in figures.items()}
            found.append({"name": name, "expression": expression, "divisor": divisor, **per})
    return found


@dataclass(frozen=True)
class Judged:
    target: Target
    wall: Verdict
    instructions: Verdict

    @property
    def status(self) -> str:
        statuses = {self.wall.status, self.instructions.status}
        return MISSED if MISSED in statuses else PASS if PASS in statuses else SKIP

    def line(self, counted: bool) -> str:
        if self.status == SKIP:
            return f"  {SKIP:<6}  {self.target.title}: {self.wall.why or self.instructions.why}"
        parts = [f"wall {_verdict(self.wall)}"] + ([f"instructions {_verdict(self.instructions)}"] if counted else [])
        return f"  {self.status:<6}  {self.target.title}: {', '.join(parts)}"

    def as_json(self) -> dict[str, Any]:
        limit = {"at_most": self.target.at_most} if self.target.at_most is not None else {
            "at_least": self.target.at_least}
        return {"name": self.target.title, "row": self.target.row, "peer": self.target.peer, **limit,
                "verdict": self.status, "wall": vars(self.wall), "instructions": vars(self.instructions)}


def _verdict(verdict: Verdict) -> str:
    if verdict.ratio is None:
        return f"{verdict.status} ({verdict.why})"
    return f"{verdict.ratio:.2f}x {verdict.status}"


def judge(targets: Sequence[Target], rows: Sequence[Row]) -> list[Judged]:
    wall, instr = walls(rows), instructions(rows)
    return [Judged(target, target.judge(wall), target.judge(instr)) for target in targets]


def as_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [
        {
            "key": row.key,
            "name": row.name,
            "status": row.status,
            "stmt": row.stmt,
            "iterations_per_round": row.n if row.ok else None,
            "min_us": row.min_us(),
            "median_us": row.median_us(),
            "instructions": row.instructions,
            "note": row.note,
        }
        for row in rows
    ]
