"""Smoke test of the overhead benchmark: it runs and reports every row. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

BASE_ROWS = {
    "rng_fork.fork_rng",
    "rng_fork.fork_rng.no_devices",
    "torch.fork_rng",
    "lightning.isolate_rng",
    "raw.all",
    "raw.python",
    "raw.numpy",
    "raw.torch",
    "rng_fork.get_rng_state",
    "rng_fork.set_rng_state",
}
ISOLATED_ROWS = {"bare.call", "isolated.call", "bare.gen_step", "isolated.gen_step"}
STREAM_ROWS = {"RngStream.enter_exit"}
TRACE_ROWS = {"train.step", "train.step.traced"}


def run_quick(tmp_path: Path, *command: str) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, *command, "--quick", "--rounds", "2", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "targets" in proc.stdout
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return report


@pytest.mark.slow
def test_quick_run_reports_every_row(tmp_path: Path) -> None:
    report = run_quick(tmp_path, "-m", "benchmarks")
    env = report["environment"]
    # The checkout's rng_fork is the one measured, whatever else is installed.
    assert Path(env["rng_fork_path"]) == ROOT / "rng_fork"

    rows = {row["key"]: row for row in report["rows"]}
    expected = set(BASE_ROWS)
    if env["has_isolated"]:
        expected |= ISOLATED_ROWS
    if env["has_RngStream"]:
        expected |= STREAM_ROWS
    if env["has_trace"]:
        expected |= TRACE_ROWS
    assert set(rows) == expected

    for key, row in rows.items():
        if key == "lightning.isolate_rng" and row["status"] == "not installed":
            assert env["lightning"] == "not installed"
            continue
        assert row["status"] == "ok", row
        assert row["min_us"] > 0 and row["median_us"] >= row["min_us"], row
        assert row["iterations_per_round"] >= 1, row

    names = {target["name"]: target["verdict"] for target in report["targets"]}
    assert len(names) == 5 and set(names.values()) <= {"PASS", "FAIL", "SKIP"}
    assert names["fork_rng() <= 1.5x torch.random.fork_rng()"] in {"PASS", "FAIL"}
    assert names["traced training step <= 3x untraced"] in {"PASS", "FAIL"}
    if env["has_isolated"]:
        assert {d["name"] for d in report["derived"]} == {
            "@isolated call minus bare call",
            "@isolated generator step minus bare step",
        }


@pytest.mark.slow
def test_runs_as_a_script(tmp_path: Path) -> None:
    report = run_quick(tmp_path, "benchmarks/bench_overhead.py")
    assert Path(report["environment"]["rng_fork_path"]) == ROOT / "rng_fork"
    assert report["rows"][0]["key"] == "rng_fork.fork_rng"


def test_gpu_mode_without_cuda_fails_clearly() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--gpu"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "--gpu needs a CUDA device" in proc.stderr
