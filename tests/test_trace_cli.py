"""``python -m rng_fork trace SCRIPT`` / ``-m MODULE``, run as a user would: in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """\
import sys, random, torch
print("argv", sys.argv[1:])
for _ in range(3):
    torch.rand(1)
random.random()
if sys.argv[1:] == ["raise"]:
    raise ValueError("from the script")
sys.exit(int(sys.argv[1]) if sys.argv[1:] else 0)
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "rng_fork", "trace", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_a_script_runs_as_main_with_its_arguments_and_exit_status(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "events.json"
    done = run("--json", str(out), str(script), "3", "--json", "not-ours", cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert "argv ['3', '--json', 'not-ours']" in done.stdout
    # The report, sorted by count: the loop's line first.
    report = done.stderr
    assert report.index("torch (3 event(s))") < report.index("python (1 event(s))")
    assert "3  draw  rand  train.py:4 in <module>" in report
    data = json.loads(out.read_text())
    assert [(e["source"], e["op"], e["lineno"]) for e in data["events"]] == [("torch", "rand", 4)] * 3 + [
        ("python", "random", 5)
    ]
    assert data["summary"][0]["count"] == 3


@pytest.mark.slow
def test_a_module_runs_as_python_dash_m_does_and_keeps_its_traceback_and_status(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "job.py").write_text(SCRIPT)
    done = run("-m", "pkg.job", "raise", cwd=tmp_path)
    assert done.returncode == 1
    assert "argv ['raise']" in done.stdout
    assert "ValueError: from the script" in done.stderr
    # The report comes at the end also when the script fails.
    assert f"{os.path.join('pkg', 'job.py')}:4 in <module>" in done.stderr


def test_without_a_script_it_says_how_to_call_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rng_fork.__main__ import main

    assert main(["trace"]) == 2
    assert "usage: python -m rng_fork trace" in capsys.readouterr().err
    assert main(["trace", "--json", str(tmp_path / "x.json"), str(tmp_path / "nowhere.py")]) == 2
    assert "nowhere.py" in capsys.readouterr().err


def test_options_end_where_the_script_begins() -> None:
    from rng_fork._tracing.script import split

    assert split(["--json", "out.json", "train.py", "--json", "theirs"]) == (
        ["--json", "out.json"], ["train.py", "--json", "theirs"]
    )
    assert split(["-m", "pkg.job", "-m", "x"]) == ([], ["-m", "pkg.job", "-m", "x"])
    assert split(["--json=o.json", "--", "-odd.py"]) == (["--json=o.json"], ["-odd.py"])
