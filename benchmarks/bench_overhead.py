"""What forking every RNG costs: rng_fork against torch, Lightning and the plain APIs, side by side.

Run from the repository root::

    python -m benchmarks                   # full run (about a minute)
    python -m benchmarks --instructions    # and instructions per execution, under callgrind (minutes)
    python -m benchmarks --quick           # smoke run (seconds)
    python -m benchmarks --check           # exit 1 naming every missed target
    python -m benchmarks --gpu             # CUDA devices (needs a GPU)

``python benchmarks/bench_overhead.py`` does the same. Either way the rng_fork
of this checkout is measured. The rows are in rows.py, the timing in
timing.py, the instruction counts in callgrind.py, the targets in targets.py;
see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: measure the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from benchmarks import callgrind, report, timing
from benchmarks.rows import REFERENCE, Row, cpu_rows, find_isolate_rng, gpu_rows
from benchmarks.targets import CPU_TARGETS, MISSED, Target, gpu_targets

FULL_ROUNDS, QUICK_ROUNDS = 300, 5
FULL_ROUND_S, QUICK_ROUND_S = 0.003, 0.0005


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Per-call overhead of rng_fork against torch.random.fork_rng, Lightning's isolate_rng "
        "and the plain get/set-state APIs, measured side by side in one run.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: a few short rounds (seconds in all)")
    parser.add_argument("--rounds", type=int, help=f"timed rounds (default {FULL_ROUNDS}; {QUICK_ROUNDS} with --quick)")
    parser.add_argument("--rows", metavar="KEYS", help="only these rows: comma-separated keys or patterns "
                        "(standin.*); targets on rows left out are skipped")
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions per execution under valgrind's callgrind (CPU rows)")
    parser.add_argument("--target", action="append", default=[], metavar="'ROW <= FACTOR * PEER'",
                        help="an extra target (>= for at least); sides are row keys or sums such as a + 2*b - c")
    parser.add_argument("--check", action="store_true", help="exit 1, naming them, if targets are missed")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the results to PATH as JSON")
    parser.add_argument("--gpu", action="store_true", help="CUDA rows (initializes CUDA; needs a GPU)")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.gpu and args.instructions:
        parser.error("--instructions counts the CPU rows only (CUDA does not run under valgrind)")
    try:
        args.extra_targets = [Target.parse(text) for text in args.target]
    except ValueError as exc:
        parser.error(str(exc))
    return args


def selector(patterns: str | None) -> tuple[list[str], Callable[[str], bool]]:
    wanted = [pattern.strip() for pattern in patterns.split(",") if pattern.strip()] if patterns else []
    return wanted, lambda key: not wanted or any(fnmatch.fnmatchcase(key, pattern) for pattern in wanted)


def build(args: argparse.Namespace) -> tuple[list[Row], str | None, list[Target], str, str] | str:
    """The rows, the Lightning found, the targets, the reference row and the mode; or an error."""
    patterns, wanted = selector(args.rows)
    if not args.gpu:
        # One intra-op thread: the training-step rows' small matrices are fastest so, and two
        # threads contending on a busy 2-core machine made them noisy by a factor of ten.
        torch.set_num_threads(1)
        rows, lightning = cpu_rows(wanted)
        mode = "cpu" + (" (CUDA present, not initialized)" if torch.cuda.is_available() else "")
        targets, reference = list(CPU_TARGETS), REFERENCE
    else:
        if not torch.cuda.is_available():
            kind = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            return f"--gpu needs a CUDA device; torch {torch.__version__} ({kind}) sees none"
        count = torch.cuda.device_count()
        for i in range(count):
            torch.cuda.get_rng_state(i)  # initializes CUDA: every device's generator exists before timing
        isolate_rng, lightning = find_isolate_rng()
        rows = [row for row in gpu_rows(isolate_rng, count) if wanted(row.key)]
        mode = f"gpu ({count} x {torch.cuda.get_device_name(0)})"
        targets, reference = gpu_targets(count), f"torch.fork_rng.cuda{count}"
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(row.key, p) for row in rows)]
    if unmatched:
        return f"--rows: no row matches {', '.join(unmatched)}"
    return rows, lightning, targets + args.extra_targets, reference, mode


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Fixed starting states, so every run draws the same (the forks under test restore them anyway).
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    built = build(args)
    if isinstance(built, str):
        print(f"error: {built}", file=sys.stderr)
        return 2
    rows, lightning, targets, reference, mode = built
    if args.instructions and callgrind.valgrind() is None:
        print("error: --instructions needs valgrind (its callgrind tool); valgrind is not on PATH", file=sys.stderr)
        return 2
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else FULL_ROUNDS)
    round_s = QUICK_ROUND_S if args.quick else FULL_ROUND_S
    env = report.environment(lightning)
    how = f"{rounds} interleaved rounds of ~{round_s * 1000:g} ms per row (timeit, gc off while timing)"
    for line in report.header(env, f"{mode}{', quick' if args.quick else ''}; {how}"):
        print(line)
    sys.stdout.flush()

    seconds = timing.measure(rows, rounds=rounds, round_s=round_s, warmup_rounds=1 if args.quick else 5,
                             quick=args.quick)
    print(f"\n{seconds:.1f} s of timing")
    if args.instructions:
        print("counting instructions under callgrind ...", flush=True)
        try:
            callgrind.count(rows, quick=args.quick)
        except callgrind.CallgrindError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    judged = report.judge(targets, rows)
    extra = report.derived(rows)
    print()
    print("\n".join(report.table(rows, reference)))
    if extra:
        print("\nderived (differences of rows' figures):")
        for item in extra:
            instr = f"  {item['instructions']:10.0f} instr" if item["instructions"] is not None else ""
            median = f"  {item['median_us']:8.2f} us median" if item["median_us"] is not None else ""
            print(f"  {item['name']:<44} {item['min_us']:8.2f} us min{median}{instr}")
    print("\ntargets (wall: minimums; instructions: per execution):")
    for verdict in judged:
        print(verdict.line(args.instructions))

    if args.json is not None:
        document = {
            "mode": "gpu" if args.gpu else "cpu",
            "quick": args.quick,
            "rounds": rounds,
            "round_target_ms": round_s * 1000,
            "reference": reference,
            "instructions_counted": args.instructions,
            "environment": env,
            "rows": report.as_json(rows),
            "derived": extra,
            "targets": [verdict.as_json() for verdict in judged],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")

    missed = [verdict.target.title for verdict in judged if verdict.status == MISSED]
    if args.check and missed:
        print(f"missed {len(missed)} target(s):", file=sys.stderr)
        for title in missed:
            print(f"  {title}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
