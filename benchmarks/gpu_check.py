"""The GPU validation run: the CUDA tests, then the GPU benchmark rows, then a summary.

Run on a machine with a CUDA GPU, from the repository root::

    python benchmarks/gpu_check.py            # about 2 minutes on one GPU

The CUDA tests run in their own pytest process (they initialize CUDA, which
the CPU tests assume has not happened).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# One broken test module must not cost the whole (rare) GPU run its report.
PYTEST_OPTIONS = ["-q", "-rfEs", "-p", "no:cacheprovider", "--continue-on-collection-errors"]


def _run(title: str, command: list[str], timeout: int) -> tuple[str, int, float]:
    print(f"\n== {title}: {' '.join(command)}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    try:
        code = subprocess.run(command, cwd=ROOT, env=env, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        code = 124
    return title, code, time.perf_counter() - start


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
    python = sys.executable
    results = [
        _run("CUDA tests", [python, "-m", "pytest", *PYTEST_OPTIONS, "-m", "cuda", "tests"], 240),
        _run("GPU benchmark", [python, "-m", "benchmarks", "--gpu", "--rounds", "60"], 150),
    ]
    print("\n== summary")
    for title, code, seconds in results:
        print(f"{title:<16} {'ok' if code == 0 else f'FAILED (exit {code})':<18} {seconds:6.1f} s")
    return max(code for _, code, _ in results)


if __name__ == "__main__":
    sys.exit(main())
