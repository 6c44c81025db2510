"""The extras stay optional: importing rng_fork never imports IPython, matplotlib, tqdm, transformers or accelerate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_importing_the_package_and_its_command_line_imports_no_extra() -> None:
    # A fresh interpreter, as this one may have imported them already; torch
    # itself imports tqdm where it is installed, so only what rng_fork adds counts.
    code = (
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "import rng_fork, rng_fork.demo, rng_fork.__main__\n"
        "assert callable(rng_fork.load_ipython_extension)\n"
        "added = set(sys.modules) - before\n"
        "extras = ('IPython', 'matplotlib', 'tqdm', 'transformers', 'accelerate')\n"
        "print(sorted(m for m in added if m.split('.')[0] in extras or m == 'torch._dynamo'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
