"""The ``%%fork_rng`` cell magic, run through a real IPython shell (no kernel)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("IPython")

from IPython.core.interactiveshell import ExecutionResult, InteractiveShell
from traitlets.config import Config

import rng_fork

from .helpers import assert_invisible, seed_globals

DRAW_EVERYTHING = "import random, numpy as np, torch\nrandom.random(); np.random.rand(3); torch.rand(5)\n"


@pytest.fixture(scope="module")
def shell() -> Iterator[InteractiveShell]:
    config = Config()
    config.HistoryManager.hist_file = ":memory:"  # never touch the user's IPython history
    ip = InteractiveShell.instance(config=config, colors="nocolor")
    ip.run_line_magic("load_ext", "rng_fork")
    yield ip
    ip.run_line_magic("unload_ext", "rng_fork")
    InteractiveShell.clear_instance()


def cell(shell: InteractiveShell, source: str) -> ExecutionResult:
    """Run one cell as a notebook would (stored in history, so it gets a number)."""
    return shell.run_cell(source, store_history=True)


def ok(result: ExecutionResult) -> Any:
    assert result.success, f"cell failed: {result.error_before_exec or result.error_in_exec!r}"
    return result.result


def test_cell_is_invisible_to_what_follows(shell: InteractiveShell) -> None:
    assert_invisible(lambda: ok(cell(shell, "%%fork_rng\n" + DRAW_EVERYTHING)))


def test_cell_starts_from_the_current_state(shell: InteractiveShell) -> None:
    expected = torch.rand(4)
    seed_globals(1234)
    assert torch.equal(ok(cell(shell, "%%fork_rng\nimport torch\ntorch.rand(4)\n")), expected)
    assert torch.equal(torch.rand(4), expected)


def test_runs_in_the_user_namespace_and_displays_the_last_expression(shell: InteractiveShell) -> None:
    shell.user_ns["base"] = 40
    assert ok(cell(shell, "%%fork_rng\nanswer = base + 1\nanswer + 1\n")) == 42
    assert shell.user_ns["answer"] == 41
    assert ok(cell(shell, "%%fork_rng\nanswer = 0\n")) is None


def test_a_trailing_semicolon_silences_the_value(shell: InteractiveShell) -> None:
    assert ok(cell(shell, "%%fork_rng\n1 + 1;  # hidden\n")) is None


def test_ipython_syntax_inside_the_cell(shell: InteractiveShell) -> None:
    # The cell's own variable: what earlier tests left in the namespace depends on which xdist worker ran them.
    assert ok(cell(shell, "%%fork_rng\ndefined_here = 1\nnames = %who_ls\n'defined_here' in names\n")) is True


def test_seed_makes_the_cell_repeatable_and_still_invisible(shell: InteractiveShell) -> None:
    with rng_fork.fork_rng(seed=7):
        seeded = torch.rand(3)
    source = "%%fork_rng --seed 7\nimport torch\ntorch.rand(3)\n"
    first, second = assert_invisible(lambda: (ok(cell(shell, source)), ok(cell(shell, source))))
    assert torch.equal(first, seeded) and torch.equal(second, seeded)


def test_options_accept_ipython_variable_expansion(shell: InteractiveShell) -> None:
    shell.user_ns["chosen_seed"] = 7
    with rng_fork.fork_rng(seed=7):
        seeded = torch.rand(3)
    assert torch.equal(ok(cell(shell, "%%fork_rng --seed {chosen_seed}\nimport torch\ntorch.rand(3)\n")), seeded)


def test_generators_are_looked_up_when_the_cell_runs(shell: InteractiveShell) -> None:
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    expected = (rng.random(), torch.rand(2, generator=gen))
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    shell.user_ns.update(rng=rng, gen=gen)
    ok(cell(shell, "%%fork_rng --generators rng,gen\nrng.random(10); torch.rand(9, generator=gen)\n"))
    got = (rng.random(), torch.rand(2, generator=gen))
    assert got[0] == expected[0] and torch.equal(got[1], expected[1])


def test_generators_with_a_seed_draw_the_same_each_time(shell: InteractiveShell) -> None:
    shell.user_ns["rng"] = np.random.default_rng(123)
    source = "%%fork_rng --seed 5 --generators rng\nrng.random()\n"
    first = ok(cell(shell, source))
    assert ok(cell(shell, source)) == first == np.random.default_rng(5).random()


def test_a_loader_in_generators_keeps_its_shuffle_order(shell: InteractiveShell) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    gen = torch.Generator().manual_seed(3)
    loader = DataLoader(TensorDataset(torch.arange(8.0)), batch_size=4, shuffle=True, generator=gen)
    expected = [batch[0].tolist() for batch in loader]
    gen.manual_seed(3)
    shell.user_ns["loader"] = loader
    ok(cell(shell, "%%fork_rng --generators loader\nfor _ in loader: pass\n"))
    assert [batch[0].tolist() for batch in loader] == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("--seed abc", "invalid int value: 'abc'"),
        ("--seed -1", "seed must be in [0, 2**32), got -1"),
        (f"--seed {2**32}", "seed must be in [0, 2**32)"),
        ("--generators nowhere", "--generators names 'nowhere', but there is no such variable"),
        ("--generators rng,,gen", "comma-separated variable names"),
        ("--generators not_a_generator", "--generators not_a_generator: generators= takes"),
        ("--what", "unrecognized arguments: --what"),
    ],
)
def test_bad_options_fail_before_the_cell_runs(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str], options: str, message: str
) -> None:
    shell.user_ns.update(rng=np.random.default_rng(0), gen=torch.Generator(), not_a_generator=3, ran=False)
    result = assert_invisible(lambda: cell(shell, f"%%fork_rng {options}\nran = True\n" + DRAW_EVERYTHING))
    assert type(result.error_in_exec).__name__ == "UsageError"
    assert message in str(result.error_in_exec)
    shown = capsys.readouterr().err
    assert shown.startswith("UsageError: %%fork_rng: ") and message in shown  # one line, no traceback
    assert shell.user_ns["ran"] is False


def test_an_error_in_the_cell_restores_and_shows_a_useful_traceback(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    source = "%%fork_rng\n" + DRAW_EVERYTHING + "def fails():\n    raise ValueError('boom')\nfails()\n"
    result = assert_invisible(lambda: cell(shell, source))
    assert isinstance(result.error_in_exec, ValueError)
    shown = capsys.readouterr().out
    number = result.execution_count
    # Lines as the user sees them in the cell: the magic is line 1.
    assert f"Cell In[{number}], line 6" in shown and "fails()" in shown
    assert f"Cell In[{number}], line 5, in fails()" in shown and "raise ValueError('boom')" in shown
    assert "ValueError: boom" in shown
    assert "rng_fork" not in shown.replace("run_cell_magic('fork_rng'", ""), "the magic's own frames are hidden"


def test_the_traceback_shows_the_magic_line_as_line_1(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    result = cell(shell, "%%fork_rng --seed 3\n1 / 0\n")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    shown = capsys.readouterr().out
    assert "1 %%fork_rng --seed 3" in shown and "----> 2 1 / 0" in shown


def test_a_keyboard_interrupt_in_the_cell_restores(shell: InteractiveShell) -> None:
    result = assert_invisible(lambda: cell(shell, "%%fork_rng\n" + DRAW_EVERYTHING + "raise KeyboardInterrupt\n"))
    assert isinstance(result.error_in_exec, KeyboardInterrupt)


def test_a_syntax_error_changes_nothing(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    shell.user_ns["ran"] = False
    # What a plain cell shows: SyntaxError, or its subclass _IncompleteInputError on Python 3.13.
    plain = type(cell(shell, "ran = True\nx = (\n").error_before_exec).__name__
    capsys.readouterr()
    result = assert_invisible(lambda: cell(shell, "%%fork_rng\nran = True\nx = (\n"))
    assert type(result.error_in_exec).__name__ == "UsageError"
    assert "the cell has a syntax error (shown above) and did not run" in str(result.error_in_exec)
    shown = capsys.readouterr().out
    # As for a plain cell: where, and what; no frames of IPython or of the magic.
    assert f"Cell In[{result.execution_count}], line 3" in shown and f"{plain}: " in shown
    assert "File " not in shown
    assert shell.user_ns["ran"] is False


def test_top_level_await_is_refused_clearly(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    result = cell(shell, "%%fork_rng\nimport asyncio\nawait asyncio.sleep(0)\n")
    assert "top-level await does not work inside %%fork_rng" in str(result.error_in_exec)
    shown = capsys.readouterr().out
    assert "SyntaxError: 'await' outside function" in shown and "File " not in shown


def test_fork_rng_nests_inside_the_cell(shell: InteractiveShell) -> None:
    seed_globals(1234)
    expected_after = torch.rand(2)
    expected_in_cell = torch.rand(2)
    seed_globals(1234)
    source = (
        "%%fork_rng\n"
        "import torch, rng_fork\n"
        "torch.rand(2)\n"
        "with rng_fork.fork_rng():\n"
        "    torch.rand(100)\n"
        "torch.rand(2)\n"
    )
    assert torch.equal(ok(cell(shell, source)), expected_in_cell)
    assert torch.equal(torch.rand(2), expected_after)


def test_help_shows_the_options(shell: InteractiveShell) -> None:
    from rng_fork.ipython import ForkRngMagics

    doc = ForkRngMagics.fork_rng.__doc__ or ""
    assert "%%fork_rng [--seed SEED] [--generators NAME[,NAME...]]" in doc
    assert "Example::" in doc


def test_unload_and_reload(shell: InteractiveShell) -> None:
    shell.run_line_magic("unload_ext", "rng_fork")
    assert shell.find_cell_magic("fork_rng") is None
    shell.run_line_magic("load_ext", "rng_fork")
    assert shell.find_cell_magic("fork_rng") is not None


def test_rng_trace_reports_the_cells_lines_and_keeps_its_draws(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    value = ok(cell(shell, "%%rng_trace\nimport torch, random\nx = torch.rand(3)\nrandom.random()\nx\n"))
    assert torch.equal(value, expected)
    assert not torch.equal(torch.rand(3), expected)  # the cell's draws stay: nothing was forked
    report = capsys.readouterr().out
    number = shell.execution_count - 1
    assert f"draw  rand  Cell In[{number}]:3 in <module>" in report
    assert f"Cell In[{number}]:4 in <module>" in report and "random" in report


def test_fork_rng_trace_forks_and_reports(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    assert_invisible(lambda: ok(cell(shell, "%%fork_rng --trace\n" + DRAW_EVERYTHING)))
    report = capsys.readouterr().out
    assert "torch (1 event(s))" in report and "python (1 event(s))" in report and "numpy (1 event(s))" in report
    assert "fork_rng" not in report  # the fork's own restore happens after the trace


def test_rng_trace_reports_also_when_the_cell_fails(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    result = cell(shell, "%%rng_trace\nimport torch\ntorch.rand(1)\nraise ValueError('cell')\n")
    assert not result.success
    assert "torch (1 event(s))" in capsys.readouterr().out


def test_rng_trace_refuses_unknown_generators(shell: InteractiveShell) -> None:
    result = cell(shell, "%%rng_trace --generators nowhere\n1\n")
    assert not result.success
    assert "%%rng_trace: --generators names 'nowhere'" in str(result.error_in_exec)
