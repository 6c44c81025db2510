"""Tests for the raw-memory fast path in ``_fastpath``.

The central property: for any generator state, the fast and the portable
(official-API) functions produce identical snapshots, and restoring through
either makes the generator produce bit-identical streams.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.random.mtrand import get_bit_generator, set_bit_generator

from rng_fork import _swap
from rng_fork.sources import PythonRandomSource, RandomStateSource, RngSource
from rng_fork.sources import _fastpath as fp

HERE = Path(__file__).resolve().parents[1]  # the repository root, so rng_fork imports

needs_fast_python = pytest.mark.skipif(not fp.FAST_PYTHON, reason=fp.fast_path_info()["python"])
needs_fast_numpy = pytest.mark.skipif(not fp.FAST_NUMPY, reason=fp.fast_path_info()["numpy"])

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------


def _mixed_words(seed: int) -> tuple[int, ...]:
    return struct.unpack("<624I", random.Random(seed).randbytes(2496))


# Raw word patterns (including all-zero and other degenerate states) are fine
# for capture comparisons, but degenerate Mersenne Twister states make
# rejection samplers (NumPy's polar gauss, normalvariate) loop forever, so the
# tests that draw use well-mixed states derived from a seed.
raw_words_st = st.binary(min_size=2496, max_size=2496).map(lambda b: struct.unpack("<624I", b))
words_st = st.integers(0, 2**64).map(_mixed_words)
index_st = st.sampled_from([0, 1, 2, 311, 622, 623, 624]) | st.integers(0, 624)
finite_st = st.floats(allow_nan=False, allow_infinity=False, width=64)
gauss_next_st = st.none() | finite_st
has_gauss_st = st.sampled_from([0, 1])

# Operations on random.Random; counts include odd numbers of gauss() calls so
# that gauss_next is left populated.
PY_OPS: dict[str, Callable[[random.Random, int], object]] = {
    "random": lambda r, n: [r.random() for _ in range(n)],
    "gauss": lambda r, n: [r.gauss(0.0, 1.0) for _ in range(n)],
    "normalvariate": lambda r, n: [r.normalvariate(1.0, 2.0) for _ in range(n)],
    "getrandbits": lambda r, n: r.getrandbits(1 + 37 * n),
    "randbytes": lambda r, n: r.randbytes(n * 13),
    "randrange": lambda r, n: [r.randrange(10**12) for _ in range(n)],
    "shuffle": lambda r, n: r.shuffle(list(range(n + 2))),
}
py_ops_st = st.lists(st.tuples(st.sampled_from(sorted(PY_OPS)), st.integers(0, 9)), max_size=8)

# Operations on RandomState; odd randn counts leave has_gauss == 1.
NP_OPS: dict[str, Callable[[np.random.RandomState, int], Any]] = {
    "randn": lambda rs, n: rs.randn(n),
    "standard_normal": lambda rs, n: rs.standard_normal(n),
    "normal_scalar": lambda rs, n: [rs.normal(3.0, 2.0) for _ in range(n)],
    "random_sample": lambda rs, n: rs.random_sample(n),
    "randint": lambda rs, n: rs.randint(0, 1000, size=n),
    "randint64": lambda rs, n: rs.randint(0, 2**62, size=n, dtype=np.int64),
    "bytes": lambda rs, n: rs.bytes(n * 7),
    "gamma": lambda rs, n: rs.standard_gamma(0.5, size=n),
    "binomial": lambda rs, n: rs.binomial(1000, 0.3, size=n),
    "permutation": lambda rs, n: rs.permutation(n + 2),
    "big": lambda rs, n: rs.random_sample(300 * n),  # crosses regenerations
}
np_ops_st = st.lists(st.tuples(st.sampled_from(sorted(NP_OPS)), st.integers(0, 9)), max_size=8)


def run_py(r: random.Random, ops: list[tuple[str, int]]) -> None:
    for name, n in ops:
        PY_OPS[name](r, n)


def run_np(rs: np.random.RandomState, ops: list[tuple[str, int]]) -> None:
    for name, n in ops:
        NP_OPS[name](rs, n)


def py_stream(r: random.Random) -> tuple[object, ...]:
    """A stream that consumes gauss_next and crosses a regeneration."""
    return (r.gauss(0.0, 1.0), r.gauss(0.0, 1.0), r.gauss(0.0, 1.0), r.randbytes(2600), r.random())


def np_stream(rs: np.random.RandomState) -> bytes:
    """A stream that consumes the Gaussian cache and crosses a regeneration."""
    return rs.randn(3).tobytes() + rs.bytes(2600) + rs.random_sample(5).tobytes() + rs.randn(1).tobytes()


class PyState(NamedTuple):
    """A random.Random state: the 624 words, the index into them, the cached Gaussian."""

    words: tuple[int, ...]
    index: int
    gauss_next: float | None

    def set(self, r: random.Random) -> random.Random:
        random.Random.setstate(r, (3, (*self.words, self.index), self.gauss_next))
        return r


class NpState(NamedTuple):
    """A RandomState's MT19937 state: the 624 words, the position, the Gaussian cache."""

    words: tuple[int, ...]
    pos: int
    has_gauss: int
    gauss: float

    def set(self, rs: np.random.RandomState) -> np.random.RandomState:
        rs.set_state(("MT19937", np.array(self.words, dtype=np.uint32), self.pos, self.has_gauss, self.gauss))
        return rs


@st.composite
def py_states(draw: st.DrawFn, words: st.SearchStrategy[tuple[int, ...]] = words_st) -> PyState:
    return PyState(draw(words), draw(index_st), draw(gauss_next_st))


@st.composite
def np_states(
    draw: st.DrawFn,
    words: st.SearchStrategy[tuple[int, ...]] = words_st,
    has_gauss: st.SearchStrategy[int] = has_gauss_st,
) -> NpState:
    return NpState(draw(words), draw(index_st), draw(has_gauss), draw(finite_st))


class Kind(NamedTuple):
    """What the fast path offers for one kind of generator, and how the tests drive it."""

    make: Callable[[], Any]  # a fresh generator
    run: Callable[[Any, list[tuple[str, int]]], None]
    stream: Callable[[Any], object]
    state_of: Callable[[Any], object]  # through the official API
    copy_state: Callable[[Any, Any], None]  # from the first generator into the second
    capture_fast: Callable[[Any], Any]
    capture_portable: Callable[[Any], Any]
    restore_fast: Callable[[Any, Any], None]
    restore_portable: Callable[[Any, Any], None]


PYTHON = Kind(
    random.Random, run_py, py_stream, random.Random.getstate,
    lambda r, into: random.Random.setstate(into, random.Random.getstate(r)),
    fp._capture_python_fast, fp.capture_python_portable, fp._restore_python_fast, fp.restore_python_portable,
)
NUMPY = Kind(
    lambda: np.random.RandomState(0), run_np, np_stream, fp.capture_numpy_portable,
    lambda rs, into: into.set_state(rs.get_state()),
    fp._capture_numpy_fast, fp.capture_numpy_portable, fp._restore_numpy_fast, fp.restore_numpy_portable,
)


def assert_fast_and_portable_restores_alike(
    kind: Kind, state: PyState | NpState, ops: list[tuple[str, int]], after: list[tuple[str, int]]
) -> None:
    """After ``ops``, a snapshot restored the fast way and the portable way draws the same stream, exactly."""
    g = state.set(kind.make())
    kind.run(g, ops)
    snap = kind.capture_portable(g)
    reference = kind.make()
    kind.copy_state(g, reference)
    expected = kind.stream(reference)

    kind.run(g, after)
    kind.restore_fast(g, snap)
    assert kind.capture_portable(g) == snap
    got_fast = kind.stream(g)

    kind.run(g, after)
    kind.restore_portable(g, snap)
    got_portable = kind.stream(g)
    assert got_fast == got_portable == expected


def assert_raw_pattern_round_trips(kind: Kind, state: PyState | NpState, other_seed: int = 1) -> None:
    g = state.set(kind.make())
    snap = kind.capture_fast(g)
    assert snap == kind.capture_portable(g)
    other = kind.make()
    other.seed(other_seed)
    kind.restore_fast(other, snap)
    assert kind.state_of(other) == kind.state_of(g)


def assert_savers_restore_exactly(
    kind: Kind,
    savers: Callable[[Any], tuple[Callable[[], Any], Callable[[Any], None]]],
    fast_form: Callable[[Any], bool],
    state: PyState | NpState,
    ops: list[tuple[str, int]],
    after: list[tuple[str, int]],
) -> None:
    """The (save, load) pair forks use restores exactly; its fast form is the snapshot format."""
    g = kind.make()
    save, load = savers(g)
    state.set(g)
    kind.run(g, ops)
    saved = save()
    if fast_form(saved):
        assert saved == kind.capture_portable(g)
    reference = kind.make()
    kind.copy_state(g, reference)
    kind.run(g, after)
    load(saved)
    assert kind.stream(g) == kind.stream(reference)


@pytest.fixture(autouse=True)
def _keep_globals() -> Iterator[None]:
    """Leave the global generators as each test found them."""
    py = random.getstate()
    bg = get_bit_generator()
    npst = np.random.get_state(legacy=False)
    yield
    random.setstate(py)
    set_bit_generator(bg)
    np.random.set_state(npst)


# --------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------


@pytest.mark.skipif(os.environ.get("RNG_FORK_PORTABLE", "") not in ("", "0"), reason="portable mode requested")
def test_fast_paths_active_here() -> None:
    """On this CPython 3.11 / NumPy 2.x / x86-64 box both fast paths verify."""
    info = fp.fast_path_info()
    assert fp.FAST_PYTHON, info
    assert fp.FAST_NUMPY, info
    assert info["python"].startswith("active")
    assert info["numpy"].startswith("active")
    assert fp.capture_python is fp._capture_python_fast
    assert fp.restore_numpy is fp._restore_numpy_fast


def test_discovered_layout_matches_known_structs() -> None:
    """Cross-check discovery against the layouts read from the C sources."""
    if fp.FAST_PYTHON:
        assert fp._py_layout is not None
        assert fp._py_layout.index_offset == object.__basicsize__
        assert fp._py_layout.state_offset == object.__basicsize__ + 4
    if fp.FAST_NUMPY:
        assert fp._np_layout is not None
        assert fp._np_layout.gauss_offset == fp._np_layout.has_gauss_offset + 8


# --------------------------------------------------------------------------
# Python random
# --------------------------------------------------------------------------


@needs_fast_python
@SETTINGS
@given(state=py_states(), ops=py_ops_st)
def test_python_fast_capture_equals_portable(state: PyState, ops: list[tuple[str, int]]) -> None:
    r = state.set(random.Random())
    assert fp._capture_python_fast(r) == fp.capture_python_portable(r)
    run_py(r, ops)
    fast = fp._capture_python_fast(r)
    portable = fp.capture_python_portable(r)
    assert fast == portable
    assert type(fast) is tuple and type(fast[0]) is bytes and len(fast[0]) == 2500
    assert hash(fast) == hash(portable)
    assert pickle.loads(pickle.dumps(fast)) == portable
    # The documented format: index first, then the 624 words, little-endian.
    _v, internal, g = r.getstate()
    assert struct.unpack("<i624I", fast[0]) == (internal[624], *internal[:624])
    assert fast[1] == g


@needs_fast_python
@SETTINGS
@given(state=py_states(), ops=py_ops_st, after=py_ops_st)
def test_python_fast_restore_equals_portable(
    state: PyState, ops: list[tuple[str, int]], after: list[tuple[str, int]]
) -> None:
    assert_fast_and_portable_restores_alike(PYTHON, state, ops, after)


@needs_fast_python
@SETTINGS
@given(state=py_states(words=raw_words_st))
def test_python_raw_patterns_capture_and_restore(state: PyState) -> None:
    assert_raw_pattern_round_trips(PYTHON, state)


def assert_cross_restores_after_pickling(kind: Kind, g: Any) -> None:
    """A fast snapshot, pickled, restores exactly through either path."""
    fast = kind.capture_fast(g)
    expected = kind.stream(g)
    for restore in (kind.restore_portable, kind.restore_fast):
        g.seed(1)
        restore(g, pickle.loads(pickle.dumps(fast)))
        assert kind.stream(g) == expected


@needs_fast_python
def test_python_cross_restore_and_pickle() -> None:
    r = random.Random(42)
    r.gauss(0.0, 1.0)  # populate gauss_next
    assert_cross_restores_after_pickling(PYTHON, r)


def test_python_global_instance_fork() -> None:
    """The library's use: snapshot random._inst, run a block, put it back."""
    random.seed(123)
    random.gauss(0.0, 1.0)
    snap = fp.capture_python(random._inst)
    expected = [random.gauss(0.0, 1.0) for _ in range(3)] + [random.random() for _ in range(700)]
    fp.restore_python(random._inst, snap)
    assert [random.gauss(0.0, 1.0) for _ in range(3)] + [random.random() for _ in range(700)] == expected
    fp.restore_python(random._inst, snap)
    assert fp.capture_python(random._inst) == fp.capture_python_portable(random._inst)


class _OverridingRandom(random.Random):
    """A subclass that overrides getstate/setstate and adds attributes."""

    def getstate(self) -> Any:
        return ("custom", super().getstate())

    def setstate(self, state: Any) -> None:
        super().setstate(state[1])


@needs_fast_python
def test_python_subclass_instances() -> None:
    r = _OverridingRandom(7)
    r.extra = "x"  # type: ignore[attr-defined]
    r.gauss(0.0, 1.0)
    snap = fp._capture_python_fast(r)
    assert snap == fp.capture_python_portable(r)
    expected = py_stream(r)
    fp._restore_python_fast(r, snap)
    assert py_stream(r) == expected
    assert r.extra == "x"  # type: ignore[attr-defined]


@needs_fast_python
def test_python_many_short_lived_generators() -> None:
    """The view cache never serves a stale address (entries pin their object)."""
    for seed in range(3 * fp._CACHE_MAX + 5):
        r = random.Random(seed)
        r.random()
        assert fp._capture_python_fast(r) == fp.capture_python_portable(r)
        fp._restore_python_fast(r, fp.capture_python_portable(random.Random(seed + 1000)))
        assert r.random() == random.Random(seed + 1000).random()
        del r
        gc.collect(0)  # refcounting frees the object; a full collection over the suite's heap costs seconds
    assert len(fp._py_views) <= fp._CACHE_MAX


@needs_fast_python
def test_python_rejects_non_random() -> None:
    import _random

    with pytest.raises(TypeError):
        fp._capture_python_fast(_random.Random())  # type: ignore[arg-type]  # no gauss_next
    with pytest.raises(TypeError):
        fp._capture_python_fast(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fp._restore_python_fast(random.Random(), (b"short", None))


# --------------------------------------------------------------------------
# NumPy RandomState
# --------------------------------------------------------------------------


@needs_fast_numpy
@SETTINGS
@given(state=np_states(), ops=np_ops_st)
def test_numpy_fast_capture_equals_portable(state: NpState, ops: list[tuple[str, int]]) -> None:
    rs = state.set(np.random.RandomState(0))
    assert fp._capture_numpy_fast(rs) == fp.capture_numpy_portable(rs)
    run_np(rs, ops)
    fast = fp._capture_numpy_fast(rs)
    portable = fp.capture_numpy_portable(rs)
    assert fast == portable
    assert type(fast) is tuple and type(fast[0]) is bytes and len(fast[0]) == 2500
    assert type(fast[1]) is int and type(fast[2]) is float
    assert hash(fast) == hash(portable)
    assert pickle.loads(pickle.dumps(fast)) == portable
    # The documented format: 624 key words then pos, little-endian.
    official = rs.get_state(legacy=False)
    assert struct.unpack("<624Ii", fast[0]) == (*official["state"]["key"].tolist(), official["state"]["pos"])
    assert fast[1:] == (official["has_gauss"], official["gauss"])


@needs_fast_numpy
@SETTINGS
@given(state=np_states(), ops=np_ops_st, after=np_ops_st)
def test_numpy_fast_restore_equals_portable(
    state: NpState, ops: list[tuple[str, int]], after: list[tuple[str, int]]
) -> None:
    assert_fast_and_portable_restores_alike(NUMPY, state, ops, after)


@needs_fast_numpy
@SETTINGS
@given(state=np_states(words=raw_words_st, has_gauss=st.integers(-(2**31), 2**31 - 1)))
def test_numpy_raw_patterns_capture_and_restore(state: NpState) -> None:
    assert_raw_pattern_round_trips(NUMPY, state)


def test_numpy_global_instance_fork() -> None:
    np.random.seed(321)
    np.random.randn(3)  # odd: the cache is populated
    rs = np.random.mtrand._rand
    snap = fp.capture_numpy(rs)
    assert snap[1] == 1
    expected = np.random.randn(5).tobytes() + np.random.bytes(3000)
    fp.restore_numpy(rs, snap)
    assert np.random.randn(5).tobytes() + np.random.bytes(3000) == expected
    fp.restore_numpy(rs, snap)
    assert fp.capture_numpy(rs) == fp.capture_numpy_portable(rs) == snap


@needs_fast_numpy
def test_numpy_cross_restore_and_pickle() -> None:
    rs = np.random.RandomState(9)
    rs.randn()
    assert_cross_restores_after_pickling(NUMPY, rs)


@needs_fast_numpy
def test_numpy_subclass_instances() -> None:
    class Sub(np.random.RandomState):
        pass

    rs = Sub(5)
    rs.randn()
    snap = fp._capture_numpy_fast(rs)
    assert snap == fp.capture_numpy_portable(rs)
    expected = np_stream(rs)
    fp._restore_numpy_fast(rs, snap)
    assert np_stream(rs) == expected


@needs_fast_numpy
def test_numpy_reinit_swaps_bit_generator() -> None:
    """``__init__`` again / ``set_bit_generator`` install a new MT19937: the
    per-object cache must notice and follow it."""
    rs = np.random.RandomState(1)
    old_bg = rs._bit_generator
    fp._capture_numpy_fast(rs)  # fill the cache for the old bit generator
    rs.__init__(2)  # type: ignore[misc]
    assert rs._bit_generator is not old_bg
    rs.randn()
    assert fp._capture_numpy_fast(rs) == fp.capture_numpy_portable(rs)
    snap = fp.capture_numpy_portable(rs)
    expected = np_stream(rs)
    old_state = old_bg.state["state"]["key"].tobytes()
    fp._restore_numpy_fast(rs, snap)
    assert np_stream(rs) == expected
    assert old_bg.state["state"]["key"].tobytes() == old_state  # old one untouched

    glob = np.random.mtrand._rand
    fp._capture_numpy_fast(glob)
    new_bg = np.random.MT19937(77)
    set_bit_generator(new_bg)
    np.random.randn()
    snap = fp._capture_numpy_fast(glob)
    assert snap == fp.capture_numpy_portable(glob)
    expected = np_stream(glob)
    fp._restore_numpy_fast(glob, snap)
    assert np_stream(glob) == expected


@needs_fast_numpy
def test_numpy_attribute_assignment_falls_back() -> None:
    """Assigning ``rs._bit_generator`` leaves NumPy's C code drawing from the
    old state while get_state/set_state use the new one; the fast path must
    then behave exactly like the official API (it defers to it)."""
    rs = np.random.RandomState(1)
    fp._capture_numpy_fast(rs)
    old_bg = rs._bit_generator
    new_bg = np.random.MT19937(3)
    rs._bit_generator = new_bg
    assert fp._np_entry(rs) is None
    assert fp._capture_numpy_fast(rs) == fp.capture_numpy_portable(rs)
    snap = fp.capture_numpy_portable(np.random.RandomState(8))
    old_key = old_bg.state["state"]["key"].tobytes()
    fp._restore_numpy_fast(rs, snap)
    assert fp.capture_numpy_portable(rs) == snap
    assert old_bg.state["state"]["key"].tobytes() == old_key


def test_numpy_non_mt19937_rejected_by_both_paths() -> None:
    rs = np.random.RandomState(np.random.PCG64(1))
    snap = fp.capture_numpy_portable(np.random.RandomState(1))
    for capture in (fp.capture_numpy_portable, fp.capture_numpy):
        with pytest.raises(TypeError, match="MT19937"):
            capture(rs)
    for restore in (fp.restore_numpy_portable, fp.restore_numpy):
        with pytest.raises(TypeError, match="MT19937"):
            restore(rs, snap)


@needs_fast_numpy
def test_numpy_many_short_lived_generators() -> None:
    for seed in range(3 * fp._CACHE_MAX + 5):
        rs = np.random.RandomState(seed)
        rs.randn()
        assert fp._capture_numpy_fast(rs) == fp.capture_numpy_portable(rs)
        del rs
        gc.collect(0)  # refcounting frees the object; a full collection over the suite's heap costs seconds
    assert len(fp._np_views) <= fp._CACHE_MAX


# --------------------------------------------------------------------------
# environment switch and fallback wiring (subprocesses: selection happens at import)
# --------------------------------------------------------------------------

_REPORT = textwrap.dedent(
    """
    import json, random, numpy as np
    {prelude}
    from rng_fork.sources import _fastpath as fp
    print(json.dumps({{
        "fast_python": fp.FAST_PYTHON,
        "fast_numpy": fp.FAST_NUMPY,
        "info": fp.fast_path_info(),
        "py_portable": fp.capture_python is fp.capture_python_portable
            and fp.restore_python is fp.restore_python_portable,
        "np_portable": fp.capture_numpy is fp.capture_numpy_portable
            and fp.restore_numpy is fp.restore_numpy_portable,
        "py_ok": fp.capture_python(random._inst) == fp.capture_python_portable(random._inst),
        "np_ok": fp.capture_numpy(np.random.mtrand._rand)
            == fp.capture_numpy_portable(np.random.mtrand._rand),
    }}))
    """
)


def _report(env_value: str | None, prelude: str = "") -> Any:
    env = dict(os.environ)
    env.pop("RNG_FORK_PORTABLE", None)
    if env_value is not None:
        env["RNG_FORK_PORTABLE"] = env_value
    return _run_json(_REPORT.format(prelude=prelude), env)


def _run_json(code: str, env: dict[str, str] | None = None) -> Any:
    """Run ``code`` in a fresh interpreter (import-time selection) and parse its JSON output."""
    out = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("value", ["1", "true", " YES "])
def test_env_var_disables_fast_path(value: str) -> None:
    rep = _report(value)
    assert rep["fast_python"] is False and rep["fast_numpy"] is False
    assert rep["py_portable"] and rep["np_portable"]
    assert rep["info"]["python"].startswith("disabled")
    assert rep["info"]["numpy"].startswith("disabled")
    assert rep["py_ok"] and rep["np_ok"]


@pytest.mark.parametrize("value", [None, "", "0"])
def test_env_var_absent_or_off_keeps_fast_path(value: str | None) -> None:
    rep = _report(value)
    assert rep["fast_python"] is True and rep["fast_numpy"] is True, rep["info"]
    assert not rep["py_portable"] and not rep["np_portable"]
    assert rep["py_ok"] and rep["np_ok"]


def test_not_cpython_falls_back() -> None:
    prelude = (
        "import sys, types; sys.implementation = types.SimpleNamespace(**{**vars(sys.implementation), 'name': 'pypy'})"
    )
    rep = _report(None, prelude)
    assert rep["fast_python"] is False and rep["fast_numpy"] is False
    assert rep["py_portable"] and rep["np_portable"]
    assert "not CPython" in rep["info"]["python"] and "not CPython" in rep["info"]["numpy"]
    assert rep["py_ok"] and rep["np_ok"]


def test_verification_mismatch_falls_back() -> None:
    """Corrupt what the probes read: discovery must refuse, not guess."""
    prelude = "import ctypes; ctypes.string_at = lambda addr, size=-1: bytes(size)"
    rep = _report(None, prelude)
    assert rep["fast_python"] is False and rep["fast_numpy"] is False
    assert rep["info"]["python"].startswith("unavailable")
    assert rep["info"]["numpy"].startswith("unavailable")
    assert rep["py_portable"] and rep["np_portable"]


def _flip_first_byte(raw: bytes) -> bytes:
    return bytes([raw[0] ^ 1]) + raw[1:]


@pytest.mark.parametrize(
    ("target", "replacement", "message"),
    [
        ("_restore_python_fast", lambda r, c: None, "after a raw write"),
        (
            "_restore_python_fast",
            lambda r, c: fp.restore_python_portable(r, (c[0], None)),  # loses gauss_next
            "after a raw write",
        ),
        ("_capture_python_fast", lambda r: (_flip_first_byte(fp.capture_python_portable(r)[0]), None), "raw read"),
    ],
)
def test_python_verifier_rejects_bad_reads_and_writes(
    monkeypatch: pytest.MonkeyPatch, target: str, replacement: Callable[..., Any], message: str
) -> None:
    """A layout that passes discovery but reads or writes wrongly is refused."""
    monkeypatch.setattr(fp, "_py_layout", fp._py_layout)  # restored after the test
    monkeypatch.setattr(fp, target, replacement)
    with pytest.raises(fp._UnavailableError, match=message):
        fp._discover_python()
    assert fp._py_layout is None  # the failed discovery left nothing usable


@pytest.mark.parametrize(
    ("target", "replacement", "message"),
    [
        ("_restore_numpy_fast", lambda rs, c: None, "after a raw write"),
        (
            "_restore_numpy_fast",
            lambda rs, c: fp.restore_numpy_portable(rs, (c[0], 0, 0.0)),  # loses the cache
            "after a raw write",
        ),
        ("_capture_numpy_fast", lambda rs: (*fp.capture_numpy_portable(rs)[:2], 0.5), "raw read"),
    ],
)
def test_numpy_verifier_rejects_bad_reads_and_writes(
    monkeypatch: pytest.MonkeyPatch, target: str, replacement: Callable[..., Any], message: str
) -> None:
    monkeypatch.setattr(fp, "_np_layout", fp._np_layout)
    monkeypatch.setattr(fp, target, replacement)
    with pytest.raises(fp._UnavailableError, match=message):
        fp._discover_numpy()
    assert fp._np_layout is None


def test_select_turns_exceptions_into_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RNG_FORK_PORTABLE", raising=False)

    def boom() -> None:
        raise RuntimeError("probe exploded")

    layout, info = fp._select(boom)
    assert layout is None
    assert info == "unavailable: RuntimeError: probe exploded"


def test_import_leaves_global_generators_alone() -> None:
    code = textwrap.dedent(
        """
        import json, random, numpy as np
        random.seed(5); np.random.seed(5); np.random.randn()
        py, npst = random.getstate(), np.random.get_state()
        from rng_fork.sources import _fastpath
        same_py = random.getstate() == py
        cur = np.random.get_state()
        same_np = (cur[1] == npst[1]).all() and cur[2:] == npst[2:]
        print(json.dumps([bool(same_py), bool(same_np), random.random(), float(np.random.rand())]))
        """
    )
    same_py, same_np, _a, _b = _run_json(code)
    assert same_py and same_np


# --------------------------------------------------------------------------
# savers: the (save, load) pairs forks use, in whichever mode is selected
# --------------------------------------------------------------------------


@SETTINGS
@given(state=py_states(), ops=py_ops_st, after=py_ops_st)
def test_python_savers_equal_portable_snapshots_and_restore_exactly(
    state: PyState, ops: list[tuple[str, int]], after: list[tuple[str, int]]
) -> None:
    # The fast form is the snapshot format; the portable one is getstate's.
    assert_savers_restore_exactly(PYTHON, fp.python_savers, lambda saved: fp.FAST_PYTHON, state, ops, after)


@SETTINGS
@given(state=np_states(), ops=np_ops_st, after=np_ops_st)
def test_numpy_savers_equal_portable_snapshots_and_restore_exactly(
    state: NpState, ops: list[tuple[str, int]], after: list[tuple[str, int]]
) -> None:
    # The fast form is the snapshot format; the other one is get_state's, with the bit generator.
    assert_savers_restore_exactly(NUMPY, fp.numpy_savers, lambda saved: len(saved) == 3, state, ops, after)


def straight_line(source_class: type[RngSource]) -> Callable[[Any], tuple[Callable[[], Any], Callable[[Any], None]]]:
    """``(save, load)`` of a one-source set's generated ``save_all``/``load_all``: the inline
    savers, written out, where the fast path is on."""

    def savers(g: Any) -> tuple[Callable[[], Any], Callable[[Any], None]]:
        source = source_class("x", g)
        sources = _swap.SourceSet([source])
        fast = fp.FAST_PYTHON if isinstance(g, random.Random) else fp.FAST_NUMPY
        assert (sources.inlines[0] is not None) == fast
        return (lambda: sources.save_all()[0]), (lambda saved: sources.load_all([saved]))

    return savers


@SETTINGS
@given(state=py_states(), ops=py_ops_st, after=py_ops_st)
def test_inline_python_savers_equal_portable_snapshots_and_restore_exactly(
    state: PyState, ops: list[tuple[str, int]], after: list[tuple[str, int]]
) -> None:
    savers = straight_line(PythonRandomSource)
    assert_savers_restore_exactly(PYTHON, savers, lambda saved: fp.FAST_PYTHON, state, ops, after)


@SETTINGS
@given(state=np_states(), ops=np_ops_st, after=np_ops_st)
def test_inline_numpy_savers_equal_portable_snapshots_and_restore_exactly(
    state: NpState, ops: list[tuple[str, int]], after: list[tuple[str, int]]
) -> None:
    savers = straight_line(RandomStateSource)
    assert_savers_restore_exactly(NUMPY, savers, lambda saved: len(saved) == 3, state, ops, after)


NUMPY_SAVERS = [
    pytest.param(fp.numpy_savers, id="callables"), pytest.param(straight_line(RandomStateSource), id="inline"),
]


@pytest.mark.parametrize("numpy_savers", NUMPY_SAVERS)
def test_numpy_savers_follow_a_new_bit_generator(numpy_savers: Callable[[Any], Any]) -> None:
    rs = np.random.RandomState(1)
    save, load = numpy_savers(rs)
    for replacement in (np.random.MT19937(5), np.random.PCG64(5)):
        rs.__init__(replacement)  # type: ignore[misc]
        rs.randn()
        saved = save()
        expected = np_stream(rs)
        load(saved)
        assert rs._bit_generator is replacement
        assert np_stream(rs) == expected
    rs._bit_generator = np.random.MT19937(9)  # the attribute alone: the official API is used
    saved = save()
    expected_state = fp.capture_numpy_portable(rs)
    rs.random_sample(700)
    load(saved)
    assert fp.capture_numpy_portable(rs) == expected_state


@pytest.mark.parametrize("numpy_savers", NUMPY_SAVERS)
def test_numpy_savers_put_back_the_bit_generator_a_block_replaced(numpy_savers: Callable[[Any], Any]) -> None:
    rs = np.random.RandomState(1)
    save, load = numpy_savers(rs)
    original = rs._bit_generator
    rs.randn()
    saved = save()
    expected = np_stream(rs)
    for replacement in (np.random.MT19937(5), np.random.PCG64(5)):
        rs.__init__(replacement)  # type: ignore[misc]
        rs.random_sample(3)
        load(saved)
        assert rs._bit_generator is original
        assert np_stream(rs) == expected
        load(saved)
