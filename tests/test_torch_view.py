"""The raw view of torch's CPU generators against torch's own get_state/set_state.

The central property, as for the Python and NumPy views: whatever state a CPU
generator is in, a raw copy out and back in leaves exactly the state and the
draws that ``get_state``/``set_state`` would, and the view reads what
``get_state`` reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rng_fork
from rng_fork.sources import TorchGeneratorSource
from rng_fork.sources import _torch_view as tv

HERE = Path(__file__).resolve().parents[1]
PORTABLE = os.environ.get("RNG_FORK_PORTABLE", "") not in ("", "0")
needs_view = pytest.mark.skipif(not tv.FAST_TORCH, reason=tv.torch_view_info())
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

OPS: dict[str, Callable[[torch.Generator, int], object]] = {
    "rand": lambda g, n: torch.rand(n, generator=g),
    "randn1": lambda g, n: [torch.randn(1, dtype=torch.float64, generator=g) for _ in range(n % 3 + 1)],
    "randn": lambda g, n: torch.randn(n * 7, generator=g),
    "randint": lambda g, n: torch.randint(0, 2**62, (n * 90,), generator=g),
    "normal": lambda g, n: torch.normal(0.0, 1.0, (n % 5 + 1,), generator=g),
    "randperm": lambda g, n: torch.randperm(n + 2, generator=g),
    "seed": lambda g, n: g.manual_seed(n * 2**40 + 7),
}
ops_st = st.lists(st.tuples(st.sampled_from(sorted(OPS)), st.integers(0, 12)), max_size=8)


def _apply(g: torch.Generator, ops: list[tuple[str, int]]) -> None:
    for name, n in ops:
        OPS[name](g, n)


def _draws(g: torch.Generator) -> bytes:
    return b"".join(
        t.numpy().tobytes()
        for t in (
            torch.randn(3, dtype=torch.float64, generator=g),
            torch.randint(0, 2**62, (700,), generator=g),
            torch.rand(4, generator=g),
        )
    )


def _bytes(t: torch.Tensor) -> bytes:
    return t.numpy().tobytes()


@pytest.mark.skipif(PORTABLE, reason="portable mode requested")
def test_view_active_here() -> None:
    assert tv.FAST_TORCH, tv.torch_view_info()
    assert tv.torch_view_info().startswith("active")
    assert tv.raw_view(torch.default_generator) is not None


def test_info_reports_the_torch_view() -> None:
    torch_entry = next(entry for entry in rng_fork.info() if entry["name"] == "torch")
    assert torch_entry["fast_path"] == tv.torch_view_info()
    assert torch_entry["fast_path"].startswith("disabled" if PORTABLE else ("active", "unavailable"))


@needs_view
@SETTINGS
@given(before=ops_st, during=ops_st, seed=st.integers(0, 2**64 - 1))
def test_raw_copy_restores_what_set_state_restores(
    before: list[tuple[str, int]], during: list[tuple[str, int]], seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    _apply(g, before)
    view = tv.raw_view(g)
    assert view is not None
    official = g.get_state()
    raw = view.raw
    assert _bytes(tv.to_official(raw)) == _bytes(official)  # the view reads what get_state reports
    _apply(g, during)
    view.raw = raw
    assert _bytes(g.get_state()) == _bytes(official)
    reference = torch.Generator()
    reference.set_state(official)
    assert _draws(g) == _draws(reference)


@needs_view
@SETTINGS
@given(ops=ops_st, seed=st.integers(0, 2**64 - 1))
def test_from_official_puts_in_what_set_state_puts_in(ops: list[tuple[str, int]], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    _apply(g, ops)
    state = g.get_state()
    target = torch.Generator()
    view = tv.raw_view(target)
    assert view is not None
    view.raw = tv.from_official(state)
    assert _bytes(target.get_state()) == _bytes(state)
    assert _draws(target) == _draws(g)


@needs_view
def test_a_cached_float_normal_travels_with_the_raw_state() -> None:
    g = torch.Generator().manual_seed(3)
    state = tv._with_cached_float(g.get_state(), -1.5)
    g.set_state(state)
    view = tv.raw_view(g)
    assert view is not None
    raw = view.raw
    g.manual_seed(4)
    view.raw = raw
    assert _bytes(g.get_state()) == _bytes(state)


@needs_view
@SETTINGS
@given(ops=ops_st)
def test_fork_rng_is_exact_for_the_default_generator(ops: list[tuple[str, int]]) -> None:
    torch.randn(1, dtype=torch.float64)  # the cached normal is part of the state
    before = torch.get_rng_state()
    with rng_fork.fork_rng():
        _apply(torch.default_generator, ops)
    assert _bytes(torch.get_rng_state()) == _bytes(before)


@needs_view
def test_a_generator_passed_in_is_saved_raw_and_snapshots_hold_tensors() -> None:
    g = torch.Generator().manual_seed(11)
    torch.randn(1, dtype=torch.float64, generator=g)
    source = TorchGeneratorSource("generator:0", g)
    saved = source.save()
    assert type(saved) is bytes
    part = source.part_of(saved)
    assert part == source.capture()
    assert _bytes(tv.to_official(source.saved_of(part))) == _bytes(g.get_state())
    expected = _draws(torch.Generator().manual_seed(0).set_state(g.get_state()))
    with rng_fork.fork_rng(generators=[g]):
        torch.rand(100, generator=g)
    assert _draws(g) == expected
    stream = rng_fork.RngStream(seed=1, generators=[g])
    with stream:
        torch.rand(3, generator=g)
    restored = rng_fork.RngStream(generators=[g])
    restored.load_state_dict(stream.state_dict())
    kept, loaded = (s.state_dict()["state"]["generator:0"]["state"] for s in (stream, restored))
    assert torch.equal(kept, loaded)


def test_generators_the_view_does_not_cover_go_through_torch() -> None:
    class Subclassed(torch.Generator):
        pass

    g = Subclassed().manual_seed(5)
    assert tv.raw_view(g) is None
    source = TorchGeneratorSource("generator:0", g)
    assert isinstance(source.save(), torch.Tensor)
    before = g.get_state()
    with rng_fork.fork_rng(generators=[g]):
        torch.rand(9, generator=g)
    assert _bytes(g.get_state()) == _bytes(before)


_REPORT = textwrap.dedent(
    """
    import json, torch
    {prelude}
    from rng_fork.sources import _torch_view as tv
    import rng_fork
    before = torch.get_rng_state()
    with rng_fork.fork_rng():
        torch.rand(5)
    print(json.dumps({{
        "fast": tv.FAST_TORCH,
        "info": tv.torch_view_info(),
        "view": tv.raw_view(torch.default_generator) is not None,
        "exact": bool(torch.equal(before, torch.get_rng_state())),
    }}))
    """
)


def _report(env_value: str | None, prelude: str = "") -> Any:
    env = dict(os.environ)
    env.pop("RNG_FORK_PORTABLE", None)
    if env_value is not None:
        env["RNG_FORK_PORTABLE"] = env_value
    code = _REPORT.format(prelude=prelude)
    out = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_portable_mode_turns_the_view_off() -> None:
    report = _report("1")
    assert report == {**report, "fast": False, "view": False, "exact": True}
    assert report["info"].startswith("disabled")


def test_a_mismatch_turns_the_view_off() -> None:
    """Memory that does not read as the probes were set: discovery refuses, forks stay exact."""
    report = _report(None, "import ctypes; ctypes.string_at = lambda addr, size=-1: bytes(size)")
    assert report == {**report, "fast": False, "view": False, "exact": True}
    assert report["info"].startswith("unavailable")
