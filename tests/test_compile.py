"""fork_rng and @isolated inside torch.compile'd functions, on the CPU.

rng_fork puts itself on Dynamo's skip list, so a fork is a graph break and runs
eagerly; the guarantee holds: what the block draws changes none of the compiled
function's later draws. Inductor draws its random numbers from seeds it takes
from torch's generator, so compiled draws differ from eager ones (unless
``torch._inductor.config.fallback_random`` is set), and a graph break changes
which code is compiled; the comparison is therefore always between the same
function compiled with blocks that draw different amounts.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rng_fork import fork_rng, isolated

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def _forked(draws: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(x: torch.Tensor) -> torch.Tensor:
        with fork_rng():
            noise = torch.rand(draws)
        return x + torch.rand(3) + noise.sum() * 0

    return fn


def _isolated(draws: int) -> Callable[[torch.Tensor], torch.Tensor]:
    @isolated
    def sample() -> torch.Tensor:
        return torch.randn(draws)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand(3) + sample().sum() * 0

    return fn


def _plain(draws: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(x: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(draws)
        return x + torch.rand(3) + noise.sum() * 0

    return fn


def _run(fn: Callable[[torch.Tensor], torch.Tensor], backend: str) -> list[torch.Tensor]:
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=backend)
    torch.manual_seed(0)
    first = compiled(torch.zeros(3))
    second = compiled(torch.zeros(3))  # a cached graph, not a fresh trace
    return [first, second, torch.rand(3)]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("backend", ["eager", "aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_what_a_block_draws_inside_a_compiled_function_changes_nothing_after_it(backend: str) -> None:
    for make in (_forked, _isolated):
        runs = [_run(make(draws), backend) for draws in (0, 100, 7)]
        assert _same(runs[0], runs[1]) and _same(runs[0], runs[2]), make.__name__


def test_the_same_functions_without_a_fork_do_change() -> None:
    # The control: the comparison above can fail.
    assert not _same(_run(_plain(0), "aot_eager"), _run(_plain(100), "aot_eager"))


@pytest.mark.slow
def test_with_fallback_random_compiled_forks_draw_what_eager_ones_do() -> None:
    import torch._inductor.config as inductor_config

    fn = _forked(100)
    torch.manual_seed(0)
    eager = [fn(torch.zeros(3)), fn(torch.zeros(3)), torch.rand(3)]
    with inductor_config.patch(fallback_random=True):
        assert _same(_run(fn, "inductor"), eager)


def test_a_compiled_function_inside_a_fork_is_undone() -> None:
    compiled = torch.compile(lambda x: x + torch.rand(3), backend="aot_eager")
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    with fork_rng():
        compiled(torch.zeros(3))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
@pytest.mark.parametrize("dynamo_first", [False, True])
def test_dynamo_skips_rng_fork_whichever_is_imported_first(dynamo_first: bool) -> None:
    code = f"""
        import warnings
        import torch
        {"import torch._dynamo" if dynamo_first else ""}
        import rng_fork
        from torch._dynamo import trace_rules

        assert trace_rules.check_file(rng_fork._swap.__file__).skipped
        def body(x):
            with rng_fork.fork_rng():
                torch.rand(3)
            return x + 1
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # e.g. "does not know how to trace ... get_state"
            torch.compile(body, backend="eager")(torch.zeros(2))
        print("ok")
    """
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=root, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_the_import_hook_wraps_without_touching_the_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.machinery
    import importlib.util
    import types

    from rng_fork import _compile

    class ReadOnlyLoader:
        __slots__ = ()

        def create_module(self, spec: object) -> None:
            return None

        def exec_module(self, module: types.ModuleType) -> None:
            module.added = []  # type: ignore[attr-defined]
            module.add = module.added.append  # type: ignore[attr-defined]

        def get_source(self, name: str) -> str:
            return "# source"

    loader = ReadOnlyLoader()
    spec = importlib.machinery.ModuleSpec(_compile._RULES, loader)  # type: ignore[arg-type]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    finder = _compile._WhenRulesImported()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    assert finder.find_spec("something.else", None) is None
    found = finder.find_spec(_compile._RULES, None)
    assert found is spec and finder not in sys.meta_path
    module = types.ModuleType(_compile._RULES)
    found.loader.exec_module(module)  # type: ignore[union-attr]
    assert module.added == ["rng_fork"]  # type: ignore[attr-defined]
    assert found.loader.get_source(_compile._RULES) == "# source"  # type: ignore[union-attr]
    assert type(loader).exec_module is ReadOnlyLoader.exec_module  # the real loader is unchanged


def test_the_import_hook_never_breaks_the_import(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from rng_fork import _compile

    def broken(name: str) -> None:
        raise ImportError("no such module here")

    monkeypatch.setattr(importlib.util, "find_spec", broken)
    finder = _compile._WhenRulesImported()
    monkeypatch.setattr(sys, "meta_path", [finder])
    assert finder.find_spec(_compile._RULES, None) is None  # the next finder gets its turn
    assert sys.meta_path == []
