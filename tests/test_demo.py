"""``python -m rng_fork demo``: the command line, its table, exit status, plot and progress bar."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rng_fork import demo
from rng_fork.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["demo", "--epochs", "2", "--workers", "0"]


def table_rows(output: str) -> dict[str, list[str]]:
    """The demo's table, keyed by its first column ("1", "2", ..., "weights")."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("epoch "))
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        first, *rest = line.split()
        rows[first] = rest
    return rows


@pytest.fixture(scope="module")
def cli_runs() -> Iterator[dict[int, subprocess.CompletedProcess[str]]]:
    """The real command, with 0 and 2 workers; both run at once to halve the wait."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "rng_fork", "demo", "--epochs", "2", "--seed", "1"]
    started = {
        workers: subprocess.Popen(
            [*command, "--workers", str(workers)], env=env, cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for workers in (0, 2)
    }
    done = {}
    for workers, process in started.items():
        out, err = process.communicate(timeout=120)
        done[workers] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    yield done


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_run_3_reproduces_run_1_and_run_2_diverges(
    cli_runs: dict[int, subprocess.CompletedProcess[str]], workers: int
) -> None:
    result = cli_runs[workers]
    assert result.returncode == 0, result.stderr
    assert f"2 epoch(s) per run, seed 1, {workers} DataLoader worker(s)" in result.stdout
    rows = table_rows(result.stdout)
    assert list(rows) == ["1", "2", "weights"]
    for epoch in ("1", "2"):
        run1, run2, run3, plain_verdict, forked_verdict = rows[epoch]
        assert run3 == run1 and forked_verdict == "same"
        assert plain_verdict == ("same" if epoch == "1" else "DIFFERS")
        assert (run2 == run1) == (epoch == "1")
    assert rows["weights"] == ["DIFFERS", "same"]
    assert "run 2 left run 1 at epoch 2" in result.stdout
    assert "OK: run 3 reproduced run 1 bit for bit" in result.stdout
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr


def test_without_isolation_the_demo_fails(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # As if fork_rng did nothing: run 3 is then run 2, and must be caught.
    monkeypatch.setattr(demo, "fork_rng", lambda: demo.nullcontext())
    assert main(SHORT) == 1
    out, err = capsys.readouterr()
    rows = table_rows(out)
    assert rows["2"][3:] == ["DIFFERS", "DIFFERS"]
    assert rows["weights"] == ["DIFFERS", "DIFFERS"]
    assert "FAILED: run 3 did not reproduce run 1" in err
    assert "OK:" not in out


def test_a_single_epoch_says_why_run_2_matches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--epochs", "1", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert table_rows(out)["weights"] == ["same", "same"]
    assert "its effect shows from --epochs 2 on" in out
    # Which of run 2's evaluation lines drew: the test loader's base seed, Monte-Carlo dropout, the jitter.
    report = out[out.index("what run 2's evaluations drew"):]
    lines = report.splitlines()
    for op, functions in (("random_", ("evaluate",)), ("bernoulli_", ("evaluate", "<listcomp>")),
                          ("randn", ("__getitem__",))):
        ends = tuple(f"in {function}" for function in functions)
        assert any(f"  {op}  " in line and line.endswith(ends) for line in lines), (op, report)


def test_plot_writes_an_800x450_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    assert main([*SHORT, "--plot", str(path)]) == 0
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (800, 450)
    assert f"plot written to {path}" in capsys.readouterr().out


def test_plot_without_matplotlib_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules makes every "import matplotlib..." raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(demo, "train", lambda **kwargs: pytest.fail("trained although it could not plot"))
    with pytest.raises(SystemExit) as exit_:
        main([*SHORT, "--plot", str(tmp_path / "x.png")])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert "error: argument --plot: needs matplotlib, which is not installed" in err
    assert "install it with: pip install matplotlib" in err
    assert out == "" and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("where", ["missing folder", "a folder", "not a picture", "no extension", "proc", "empty"])
def test_a_plot_path_that_cannot_be_written_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(demo, "train", lambda **kwargs: pytest.fail("trained although it could not plot"))
    path, expected = {
        "missing folder": (str(tmp_path / "nowhere" / "x.png"), f"the folder {tmp_path / 'nowhere'} does not exist"),
        "a folder": (str(tmp_path), "that is a folder"),
        "not a picture": (str(tmp_path / "x.txt"), "matplotlib cannot write a .txt file; end the name with one of"),
        "no extension": (str(tmp_path / "plot"), "cannot write a file without an extension"),
        "proc": ("/proc/x.png", "cannot be written"),
        "empty": ("", "needs a file name, such as demo.png"),
    }[where]
    with pytest.raises(SystemExit) as exit_:
        main([*SHORT, f"--plot={path}"])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    prefix = "argument --plot: " if not path else f"argument --plot: {path}: "
    assert "usage: python -m rng_fork demo" in err and prefix + "" in err and expected in err
    assert "folder ." not in err and not list(tmp_path.glob("x.*"))
    assert out == ""


def test_a_plot_file_that_exists_is_kept_until_the_plot_replaces_it(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from rng_fork.demo import _plot_path

    existing = tmp_path / "old.png"
    existing.write_bytes(b"old")
    assert _plot_path(str(existing)) == existing and existing.read_bytes() == b"old"
    fresh = tmp_path / "new.pdf"
    assert _plot_path(str(fresh)) == fresh and not fresh.exists()


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, where tqdm draws its bar."""

    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    demo.train_three_runs(epochs=1, seed=0, workers=0)
    drawn = terminal.getvalue()
    assert "run 1: no evaluation" in drawn and "run 3: evaluation in fork_rng()" in drawn
    assert "/3 [" in drawn  # counts epochs of all three runs


def test_no_progress_bar_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm")
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    bar = demo.progress_bar(total=2)
    bar.update()
    bar.close()
    assert captured.getvalue() == ""


def test_no_progress_bar_without_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    runs = demo.train_three_runs(epochs=1, seed=0, workers=0)
    assert len(runs) == 3 and terminal.getvalue() == ""


def test_thread_count_is_restored() -> None:
    threads = torch.get_num_threads()
    demo.train_three_runs(epochs=1, seed=0, workers=0)
    assert torch.get_num_threads() == threads


def test_the_seed_changes_the_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SHORT, "--seed", "1"]) == 0
    first = table_rows(capsys.readouterr().out)["2"]
    assert main([*SHORT, "--seed", "2"]) == 0
    assert table_rows(capsys.readouterr().out)["2"][0] != first[0]


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m rng_fork") and "demo" in out


def test_demo_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--epochs", "--seed", "--workers", "--plot PATH"):
        assert option in out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--epochs", "0"], "--epochs: must be at least 1, got 0"),
        (["--workers", "-1"], "--workers: must be at least 0, got -1"),
        (["--seed", "-1"], "--seed: seed must be in [0, 2**32), got -1"),
        (["--seed", str(2**32)], "--seed: seed must be in [0, 2**32)"),
        (["--seed", "x"], "--seed: not an int: 'x'"),
        (["--epochs", "1.5"], "--epochs: not an int: '1.5'"),
    ],
)
def test_bad_options_exit_2(options: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["demo", *options])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
