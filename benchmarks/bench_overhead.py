"""What forking every RNG costs: rng_fork against torch, Lightning and the plain APIs.

Each row is one statement, timed as the cost of one execution (for a context
manager: constructing it, entering and exiting an empty block). All rows are
measured side by side in one process: rounds go round-robin over every row,
each round runs a row's statement N times between two ``time.perf_counter_ns``
readings (N calibrated per row so a round takes a few milliseconds), and the
table reports the minimum and the median over rounds of the time per execution.
The garbage collector is off while timing.

Run from the repository root::

    python -m benchmarks                 # full run (under a minute)
    python -m benchmarks --quick         # smoke run (seconds), for CI
    python -m benchmarks --json out.json --check
    python -m benchmarks --gpu           # CUDA devices (needs a GPU)

``python benchmarks/bench_overhead.py`` does the same. Either way the rng_fork
of this checkout is measured. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: measure the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import random

import numpy as np
import torch

import rng_fork

REFERENCE = "torch.fork_rng"
"""Key of the row every ratio is taken against (CPU mode)."""

NOT_INSTALLED = "not installed"


@dataclass
class Row:
    """One timed statement and its samples (nanoseconds per execution, one per round)."""

    key: str
    name: str
    stmt: str
    namespace: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    note: str = ""
    n: int = 0
    samples: list[float] = field(default_factory=list)
    timed: Callable[[int], int] | None = None
    around: str = "_nullcontext()"
    """A context manager the N executions of a round run inside (entered and left outside the timing)."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def compile(self) -> None:
        """Build ``timed(n)``: run the statement n times, return the elapsed nanoseconds."""
        source = (
            "def _timed(_n, _timer=_perf_counter_ns, _repeat=_repeat):\n"
            f"    with {self.around}:\n"
            "        _t0 = _timer()\n"
            "        for _ in _repeat(None, _n):\n"
            f"{textwrap.indent(self.stmt, ' ' * 12)}\n"
            "        return _timer() - _t0\n"
        )
        namespace = {
            **self.namespace,
            "_perf_counter_ns": time.perf_counter_ns,
            "_repeat": itertools.repeat,
            "_nullcontext": contextlib.nullcontext,
        }
        exec(compile(source, f"<row {self.key}>", "exec"), namespace)
        self.timed = namespace["_timed"]

    def min_us(self) -> float | None:
        return min(self.samples) / 1000 if self.samples else None

    def median_us(self) -> float | None:
        return statistics.median(self.samples) / 1000 if self.samples else None


def missing(key: str, name: str, status: str = NOT_INSTALLED) -> Row:
    """A row that cannot be measured here; it is listed with its reason, never timed."""
    return Row(key, name, "pass", status=status)


# --------------------------------------------------------------------------- rows


def find_isolate_rng() -> tuple[Callable[..., Any] | None, str | None]:
    """Lightning's ``isolate_rng`` and the package it came from, or ``(None, None)``."""
    try:
        from lightning.pytorch.utilities.seed import isolate_rng
    except ImportError:
        pass
    else:
        import lightning

        return isolate_rng, f"lightning {lightning.__version__}"
    try:
        from pytorch_lightning.utilities.seed import isolate_rng
    except ImportError:
        return None, None
    import pytorch_lightning

    return isolate_rng, f"pytorch_lightning {pytorch_lightning.__version__}"


def isolate_row(isolate_rng: Callable[..., Any]) -> Row:
    name = "lightning isolate_rng()"
    return Row("lightning.isolate_rng", name, cm_stmt("isolate_rng()"), {"isolate_rng": isolate_rng})


def cm_stmt(call: str) -> str:
    """An empty ``with`` block: construct, enter and exit a context manager."""
    return f"with {call}:\n    pass"


RAW_ALL = """\
_a = random.getstate(); _b = np.random.get_state(); _c = torch.get_rng_state()
random.setstate(_a); np.random.set_state(_b); torch.set_rng_state(_c)"""


def cpu_rows(isolate_rng: Callable[..., Any] | None) -> list[Row]:
    """The CPU rows; the ``@isolated`` and ``RngStream`` ones only where rng_fork has them."""
    modules = {"random": random, "np": np, "torch": torch, "rng_fork": rng_fork}
    rows = [
        Row("rng_fork.fork_rng", "rng_fork.fork_rng()", cm_stmt("rng_fork.fork_rng()"), modules),
        Row(
            "rng_fork.fork_rng.no_devices",
            "rng_fork.fork_rng(devices=[])",
            cm_stmt("rng_fork.fork_rng(devices=[])"),
            modules,
            note="no lazy-CUDA guard",
        ),
        Row(REFERENCE, "torch.random.fork_rng(devices=[])", cm_stmt("torch.random.fork_rng(devices=[])"), modules),
    ]
    if isolate_rng is None:
        rows.append(missing("lightning.isolate_rng", "lightning isolate_rng()"))
    elif torch.cuda.is_available():
        # The default include_cuda=True would initialize CUDA in the middle of a CPU run.
        rows.append(
            Row(
                "lightning.isolate_rng",
                "lightning isolate_rng(include_cuda=False)",
                cm_stmt("isolate_rng(include_cuda=False)"),
                {"isolate_rng": isolate_rng},
            )
        )
    else:
        rows.append(isolate_row(isolate_rng))
    rows += [
        Row("raw.all", "raw get+set: random + numpy + torch", RAW_ALL, modules),
        Row("raw.python", "raw get+set: random", "random.setstate(random.getstate())", modules),
        Row("raw.numpy", "raw get+set: np.random", "np.random.set_state(np.random.get_state())", modules),
        Row("raw.torch", "raw get+set: torch CPU", "torch.set_rng_state(torch.get_rng_state())", modules),
        Row("rng_fork.get_rng_state", "rng_fork.get_rng_state()", "rng_fork.get_rng_state()", modules),
        Row(
            "rng_fork.set_rng_state",
            "rng_fork.set_rng_state(state)",
            "rng_fork.set_rng_state(state)",
            {**modules, "state": rng_fork.get_rng_state()},
        ),
    ]
    # Issue 3's API, absent from older rng_fork: measured only where it exists.
    isolated: Callable[[Callable[..., Any]], Callable[..., Any]] | None = getattr(rng_fork, "isolated", None)
    if isolated is not None:

        def plain() -> None:
            pass

        def endless() -> Any:
            while True:
                yield

        @isolated
        def isolated_plain() -> None:
            pass

        @isolated
        def isolated_endless() -> Any:
            while True:
                yield

        rows += [
            Row("bare.call", "bare call f()", "f()", {"f": plain}),
            Row("isolated.call", "@isolated call f()", "f()", {"f": isolated_plain}),
            Row("bare.gen_step", "bare generator step next(g)", "next(g)", {"g": endless()}),
            Row("isolated.gen_step", "@isolated generator step next(g)", "next(g)", {"g": isolated_endless()}),
        ]
    stream_type = getattr(rng_fork, "RngStream", None)
    if stream_type is not None:
        stream = stream_type(seed=0)
        name = "with stream: (stream = RngStream(seed=0))"
        rows.append(Row("RngStream.enter_exit", name, cm_stmt("stream"), {"stream": stream}))
    if hasattr(rng_fork, "trace"):
        rows += training_step_rows()
    return rows


MLP = (64, 256, 256, 10)
"""The training step's MLP: layer widths, with dropout after each hidden layer."""


def training_step_rows() -> list[Row]:
    """One SGD step of a small MLP with dropout on a batch of 64, plain and inside ``rng_fork.trace()``.

    The trace is entered before a round's executions and left after them, so the
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
    namespace = {"step": step, "rng_fork": rng_fork}
    return [
        Row("train.step", f"MLP {widths} step (dropout, batch 64)", "step()", namespace),
        Row("train.step.traced", "the same step inside rng_fork.trace()", "step()", namespace,
            around="rng_fork.trace()"),
    ]


def gpu_rows(isolate_rng: Callable[..., Any] | None, count: int) -> list[Row]:
    """The CUDA rows, for an initialized runtime with ``count`` devices."""
    modules = {"torch": torch, "rng_fork": rng_fork}
    rows = [
        Row("rng_fork.fork_rng", "rng_fork.fork_rng() (all devices)", cm_stmt("rng_fork.fork_rng()"), modules),
    ]
    for n in range(1, count + 1):
        rows += [
            Row(
                f"torch.fork_rng.cuda{n}",
                f"torch.random.fork_rng(devices=range({n}))",
                cm_stmt(f"torch.random.fork_rng(devices=range({n}))"),
                modules,
            ),
            Row(
                f"rng_fork.fork_rng.cuda{n}",
                f"rng_fork.fork_rng(devices=range({n}))",
                cm_stmt(f"rng_fork.fork_rng(devices=range({n}))"),
                modules,
            ),
        ]
    if isolate_rng is None:
        rows.append(missing("lightning.isolate_rng", "lightning isolate_rng()"))
    else:
        rows.append(isolate_row(isolate_rng))
    rows.append(Row("raw.torch", "raw get+set: torch CPU", "torch.set_rng_state(torch.get_rng_state())", modules))
    for i in range(count):
        rows += [
            Row(
                f"raw.cuda{i}",
                f"raw get+set: torch.cuda (device {i})",
                f"torch.cuda.set_rng_state(torch.cuda.get_rng_state({i}), {i})",
                modules,
            ),
            Row(
                f"raw.cuda{i}.generator",
                f"raw get+set: default_generators[{i}]",
                "g.set_state(g.get_state())",
                {"g": torch.cuda.default_generators[i]},
            ),
        ]
    return rows


# --------------------------------------------------------------------------- timing


def calibrate(row: Row, target_ns: int) -> None:
    """Pick N so that N executions take about ``target_ns``.

    N grows until a run takes a tenth of the target; the time per execution is
    then the fastest of five runs of that size, so one preempted run (on a busy
    machine) cannot make N far too small.
    """
    timed = row.timed
    assert timed is not None
    n = 1
    while timed(n) < target_ns // 10 and n < 1 << 24:
        n *= 2
    per_execution = max(min(timed(n) for _ in range(5)) / n, 1.0)
    row.n = max(1, round(target_ns / per_execution))


def measure(rows: Sequence[Row], *, rounds: int, target_ns: int, warmup_rounds: int) -> float:
    """Time every ok row for ``rounds`` interleaved rounds; returns the seconds it took."""
    live = [row for row in rows if row.ok]
    started = time.perf_counter()
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for row in live:
            row.compile()
            assert row.timed is not None
            for _ in range(3):
                row.timed(1)
            calibrate(row, target_ns)
        for _ in range(warmup_rounds):
            for row in live:
                assert row.timed is not None
                row.timed(row.n)
        for r in range(rounds):
            # Round-robin, starting one row further each round, so no row always follows the same one.
            start = r % len(live)
            for row in itertools.chain(live[start:], live[:start]):
                assert row.timed is not None
                row.samples.append(row.timed(row.n) / row.n)
            if r % 50 == 49:
                gc.collect()  # between rounds, never inside one: keeps memory flat
    finally:
        if was_enabled:
            gc.enable()
    return time.perf_counter() - started


# --------------------------------------------------------------------------- report


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


def usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def fast_path() -> list[str]:
    """What ``rng_fork.info()`` says about a fast path (keys containing "fast"), if anything."""
    try:
        rows = rng_fork.info()
    except Exception as exc:  # noqa: BLE001 - the benchmark reports, it does not judge info()
        return [f"rng_fork.info() failed: {type(exc).__name__}: {exc}"]
    found = []
    for source in rows:
        for key, value in source.items():
            if "fast" in str(key).lower():
                found.append(f"{source.get('name', '?')}: {key}={value}")
    return found


def environment(lightning: str | None) -> dict[str, Any]:
    fast = fast_path()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "platform": platform.platform(),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": np.__version__,
        "lightning": lightning or NOT_INSTALLED,
        "rng_fork": rng_fork.__version__,
        "rng_fork_path": str(Path(rng_fork.__file__).resolve().parent),
        "has_isolated": hasattr(rng_fork, "isolated"),
        "has_RngStream": hasattr(rng_fork, "RngStream"),
        "has_trace": hasattr(rng_fork, "trace"),
        "fast_path": fast or None,
        "RNG_FORK_PORTABLE": os.environ.get("RNG_FORK_PORTABLE"),
    }


@dataclass
class Target:
    name: str
    verdict: str  # PASS, FAIL or SKIP
    detail: str


def _min(rows: dict[str, Row], key: str) -> float | None:
    row = rows.get(key)
    return row.min_us() if row is not None and row.ok else None


def ratio_target(name: str, value: float | None, limit: float, what: str, skip: str) -> Target:
    """PASS when ``value <= limit``."""
    if value is None:
        return Target(name, "SKIP", skip)
    verdict = "PASS" if value <= limit else "FAIL"
    return Target(name, verdict, f"{what} = {value:.2f} (limit {limit:g})")


def cpu_targets(rows: dict[str, Row]) -> list[Target]:
    fork, torch_fork = _min(rows, "rng_fork.fork_rng"), _min(rows, REFERENCE)
    isolate = _min(rows, "lightning.isolate_rng")
    call, step = _min(rows, "isolated.call"), _min(rows, "isolated.gen_step")
    plain_step, traced_step = _min(rows, "train.step"), _min(rows, "train.step.traced")
    assert fork is not None
    targets = [
        ratio_target(
            "fork_rng() <= 1.5x torch.random.fork_rng()",
            fork / torch_fork if torch_fork else None,
            1.5,
            "fork_rng / torch.random.fork_rng",
            "torch.random.fork_rng not measured",
        )
    ]
    speedup = isolate / fork if isolate is not None else None
    targets.append(
        Target("fork_rng() >= 15x faster than isolate_rng()", "SKIP", "Lightning not installed")
        if speedup is None
        else Target(
            "fork_rng() >= 15x faster than isolate_rng()",
            "PASS" if speedup >= 15 else "FAIL",
            f"isolate_rng / fork_rng = {speedup:.2f} (needs >= 15)",
        )
    )
    targets.append(
        Target("@isolated call <= fork_rng() + 1 us", "SKIP", "rng_fork has no isolated")
        if call is None
        else Target(
            "@isolated call <= fork_rng() + 1 us",
            "PASS" if call <= fork + 1.0 else "FAIL",
            f"{call:.2f} us vs {fork:.2f} + 1 us",
        )
    )
    targets.append(
        ratio_target(
            "@isolated generator step <= 2.5x fork_rng()",
            step / fork if step is not None else None,
            2.5,
            "step / fork_rng",
            "rng_fork has no isolated",
        )
    )
    targets.append(
        ratio_target(
            "traced training step <= 3x untraced",
            traced_step / plain_step if traced_step is not None and plain_step else None,
            3.0,
            "traced / untraced step",
            "rng_fork has no trace",
        )
    )
    return targets


def gpu_targets(rows: dict[str, Row], count: int) -> list[Target]:
    fork, isolate = _min(rows, "rng_fork.fork_rng"), _min(rows, "lightning.isolate_rng")
    assert fork is not None
    targets = []
    reference = _min(rows, f"torch.fork_rng.cuda{count}")
    targets.append(
        ratio_target(
            f"fork_rng() no slower than torch.random.fork_rng(devices=range({count}))",
            fork / reference if reference else None,
            1.0,
            "rng_fork / torch",
            "not measured",
        )
    )
    for n in range(1, count + 1):
        ours, theirs = _min(rows, f"rng_fork.fork_rng.cuda{n}"), _min(rows, f"torch.fork_rng.cuda{n}")
        targets.append(
            ratio_target(
                f"fork_rng(devices=range({n})) no slower than torch.random.fork_rng(devices=range({n}))",
                ours / theirs if ours is not None and theirs else None,
                1.0,
                "rng_fork / torch",
                "not measured",
            )
        )
    targets.append(
        Target("fork_rng() >= 15x faster than isolate_rng()", "SKIP", "Lightning not installed")
        if isolate is None
        else Target(
            "fork_rng() >= 15x faster than isolate_rng()",
            "PASS" if isolate / fork >= 15 else "FAIL",
            f"isolate_rng / fork_rng = {isolate / fork:.2f} (needs >= 15)",
        )
    )
    return targets


def derived(rows: dict[str, Row]) -> list[dict[str, Any]]:
    """Differences worth reading on their own: the cost @isolated adds to a call or a step."""
    result = []
    for name, minuend, subtrahend in (
        ("@isolated call minus bare call", "isolated.call", "bare.call"),
        ("@isolated generator step minus bare step", "isolated.gen_step", "bare.gen_step"),
    ):
        a, b = rows.get(minuend), rows.get(subtrahend)
        if a is None or b is None or not (a.ok and b.ok):
            continue
        a_min, b_min, a_med, b_med = a.min_us(), b.min_us(), a.median_us(), b.median_us()
        assert a_min is not None and b_min is not None and a_med is not None and b_med is not None
        result.append({"name": name, "min_us": a_min - b_min, "median_us": a_med - b_med})
    return result


def _fmt(value: float | None, width: int) -> str:
    if value is None:
        return " " * width
    digits = 3 if value < 1 else 2 if value < 1000 else 0
    return f"{value:{width}.{digits}f}"


def table(rows: Sequence[Row], reference: str) -> list[str]:
    ref_row = next((row for row in rows if row.key == reference and row.ok), None)
    ref = ref_row.min_us() if ref_row is not None else None
    width = max(len(row.name) for row in rows)
    lines = [
        f"ratio = a row's min / the min of {ref_row.name if ref_row else reference + ' (not measured)'}",
        "",
        f"{'row':<{width}}  {'min us':>10}  {'median us':>10}  {'ratio':>8}  {'N/round':>7}",
    ]
    lines.append("-" * len(lines[-1]))
    for row in rows:
        if not row.ok:
            lines.append(f"{row.name:<{width}}  {row.status:>10}")
            continue
        low, mid = row.min_us(), row.median_us()
        ratio = f"{low / ref:.2f}x" if low is not None and ref else ""
        note = f"  ({row.note})" if row.note else ""
        lines.append(f"{row.name:<{width}}  {_fmt(low, 10)}  {_fmt(mid, 10)}  {ratio:>8}  {row.n:>7}{note}")
    return lines


def header(env: dict[str, Any], mode: str, rounds: int, target_ms: float) -> list[str]:
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
        f"mode:      {mode}; {rounds} interleaved rounds of ~{target_ms:g} ms per row; gc off while timing",
    ]


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Per-call overhead of rng_fork against torch.random.fork_rng, Lightning's isolate_rng "
        "and the plain get/set-state APIs.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: a few short rounds (seconds in all)")
    parser.add_argument("--rounds", type=int, help="timed rounds (default 300; 5 with --quick)")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the results to PATH as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    parser.add_argument("--gpu", action="store_true", help="CUDA rows (initializes CUDA; needs a GPU)")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (5 if args.quick else 300)
    target_ms = 0.5 if args.quick else 3.0
    warmup_rounds = 1 if args.quick else 5

    # Fixed starting states, so every run draws the same (the forks under test restore them anyway).
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)

    if args.gpu and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        print(f"error: --gpu needs a CUDA device; torch {torch.__version__} ({build}) sees none", file=sys.stderr)
        return 2
    isolate_rng, lightning = find_isolate_rng()
    if args.gpu:
        count = torch.cuda.device_count()
        for i in range(count):
            torch.cuda.get_rng_state(i)  # initializes CUDA: every device's generator exists before timing
        rows = gpu_rows(isolate_rng, count)
        reference = f"torch.fork_rng.cuda{count}"
        mode = f"gpu ({count} x {torch.cuda.get_device_name(0)})"
    else:
        count = 0
        # One intra-op thread: the training-step rows' small matrices are fastest so, and two
        # threads contending on a busy 2-core machine made them noisy by a factor of ten.
        torch.set_num_threads(1)
        rows = cpu_rows(isolate_rng)
        reference = REFERENCE
        mode = "cpu" + (" (CUDA present, not initialized)" if torch.cuda.is_available() else "")

    env = environment(lightning)
    for line in header(env, mode + (", quick" if args.quick else ""), rounds, target_ms):
        print(line)
    if not args.gpu and not env["has_isolated"]:
        print("note:      rng_fork has no `isolated`: the @isolated rows are not measured")
    if not args.gpu and not env["has_RngStream"]:
        print("note:      rng_fork has no `RngStream`: its row is not measured")
    sys.stdout.flush()

    seconds = measure(rows, rounds=rounds, target_ns=int(target_ms * 1e6), warmup_rounds=warmup_rounds)
    by_key = {row.key: row for row in rows}
    targets = gpu_targets(by_key, count) if args.gpu else cpu_targets(by_key)
    extra = derived(by_key)

    print()
    print("\n".join(table(rows, reference)))
    if extra:
        print()
        print("derived (difference of the two rows' min / median):")
        for item in extra:
            print(f"  {item['name']:<44} {item['min_us']:8.2f} us min  {item['median_us']:8.2f} us median")
    print()
    print("targets (min-based):")
    for target in targets:
        print(f"  {target.verdict:<4}  {target.name}: {target.detail}")
    print(f"\n{seconds:.1f} s of measuring")

    if args.json is not None:
        report = {
            "mode": "gpu" if args.gpu else "cpu",
            "quick": args.quick,
            "rounds": rounds,
            "round_target_ms": target_ms,
            "reference": reference,
            "environment": env,
            "rows": [
                {
                    "key": row.key,
                    "name": row.name,
                    "status": row.status,
                    "stmt": row.stmt,
                    "iterations_per_round": row.n if row.ok else None,
                    "min_us": row.min_us(),
                    "median_us": row.median_us(),
                    "note": row.note,
                }
                for row in rows
            ],
            "derived": extra,
            "targets": [vars(target) for target in targets],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")

    failed = [target for target in targets if target.verdict == "FAIL"]
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
