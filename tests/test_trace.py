"""rng_fork.trace(): every op family and call that draws is named at its line; nothing else is;
every change is named; tracing changes no number; hooks come off on every exit."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable
from random import random as imported_random  # bound before any trace: the same method
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

import rng_fork
from rng_fork import RngEvent, trace
from rng_fork.sources import _fastpath

from .helpers import seed_globals

NUMPY_SEEN = sys.version_info >= (3, 12)
"""Whether the call hook sees NumPy's (Cython) methods; on 3.11 their draws are found by state."""
NUMPY_LOCATED = NUMPY_SEEN or _fastpath.FAST_NUMPY
"""Whether NumPy's draws are found where they happen; on 3.11 with RNG_FORK_PORTABLE=1, at the next event."""

X = torch.ones(8, 8, requires_grad=True)
DATA = TensorDataset(torch.arange(6.0))


class NoisyBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        return t * 2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * torch.rand_like(grad)


def traced(fn: Callable[[], object], **kwargs: Any) -> list[RngEvent]:
    with trace(**kwargs) as tr:
        fn()
    return tr.events


def line_of(fn: Callable[..., object]) -> int:
    """The line of a one-line function's body (written on the def line)."""
    return fn.__code__.co_firstlineno


# One line each, so each event's line is the def's.
def c_rand(): torch.rand(3)
def c_randn(): torch.randn(3)
def c_randint(): torch.randint(0, 5, (3,))
def c_rand_like(): torch.rand_like(X)
def c_randn_like(): torch.randn_like(X)
def c_randperm(): torch.randperm(5)
def c_multinomial(): torch.multinomial(torch.ones(4), 2)
def c_bernoulli(): torch.bernoulli(torch.full((4,), 0.5))
def c_normal(): torch.normal(torch.zeros(3), 1.0)
def c_normal_size(): torch.normal(0.0, 1.0, size=(3,))
def c_random_(): torch.empty(3).random_()
def c_uniform_(): torch.empty(3).uniform_()
def c_normal_(): torch.empty(3).normal_()
def c_bernoulli_(): torch.empty(3).bernoulli_(0.5)
def c_exponential_(): torch.empty(3).exponential_()
def c_dropout(): nn.functional.dropout(X, 0.5, True)
def c_dropout_module(): nn.Dropout(0.5).train()(X)
def c_dropout_no_grad(): torch.no_grad()(nn.functional.dropout)(X, 0.5, True)
def c_init_uniform(): nn.init.uniform_(torch.empty(3))
def c_init_normal(): nn.init.normal_(torch.empty(3))
def c_init_kaiming(): nn.init.kaiming_uniform_(torch.empty(3, 3))
def c_init_orthogonal(): nn.init.orthogonal_(torch.empty(3, 3))
def c_random_sampler(): list(RandomSampler(DATA))
def c_loader_base_seed(): list(DataLoader(DATA))
def c_explicit_default(): torch.rand(3, generator=torch.default_generator)


COUNTED = [
    (c_rand, "rand"), (c_randn, "randn"), (c_randint, "randint"), (c_rand_like, "rand_like"),
    (c_randn_like, "randn_like"), (c_randperm, "randperm"), (c_multinomial, "multinomial"),
    (c_bernoulli, "bernoulli"), (c_normal, "normal"), (c_normal_size, "normal"), (c_random_, "random_"),
    (c_uniform_, "uniform_"), (c_normal_, "normal_"), (c_bernoulli_, "bernoulli_"),
    (c_exponential_, "exponential_"), (c_dropout, "bernoulli_"), (c_dropout_module, "bernoulli_"),
    (c_dropout_no_grad, "bernoulli_"), (c_init_uniform, "uniform_"), (c_init_normal, "normal_"),
    (c_init_kaiming, "uniform_"), (c_init_orthogonal, "normal_"), (c_random_sampler, "random_"),
    (c_loader_base_seed, "random_"), (c_explicit_default, "rand"),
]


@pytest.mark.parametrize(("case", "op"), COUNTED, ids=[case.__name__[2:] for case, _ in COUNTED])
def test_each_torch_op_family_that_draws_is_one_event_at_its_line(case: Callable[[], None], op: str) -> None:
    events = traced(case)
    assert [(e.source, e.kind, e.op, e.lineno, e.function) for e in events] == [
        ("torch", "draw", op, line_of(case), case.__name__)
    ]
    assert events[0].filename == __file__
    assert events[0].stack[0] == f"{__file__}:{line_of(case)} in {case.__name__}"


def test_dropout_under_inference_mode_counts() -> None:
    with trace() as tr, torch.inference_mode():
        nn.functional.dropout(torch.ones(4), 0.5, True); line = sys._getframe().f_lineno  # noqa: E702
    assert [(e.op, e.lineno) for e in tr.events] == [("dropout", line)]


def test_a_custom_function_drawing_in_backward_is_named_in_its_backward() -> None:
    y = NoisyBackward.apply(X).sum()
    events = traced(y.backward)
    assert [(e.source, e.op, e.function) for e in events] == [("torch", "rand_like", "backward")]
    assert events[0].lineno == NoisyBackward.backward.__code__.co_firstlineno + 2


def test_every_default_loader_iteration_draws_its_base_seed() -> None:
    loader = DataLoader(DATA, batch_size=2, shuffle=True)
    with trace() as tr:
        for _ in range(3):
            for _ in loader:
                pass
    # Each epoch: the base seed, and the shuffling sampler's own seed.
    assert [e.op for e in tr.events] == ["random_"] * 6
    assert tr.summary()[0].count == 6


NOT_COUNTED = {
    "eval-mode dropout": lambda: nn.Dropout(0.5).eval()(X),
    "p=0": lambda: nn.functional.dropout(X, 0.0, True),
    "rand(0)": lambda: torch.rand(0),
    "a private generator": lambda: torch.rand(3, generator=torch.Generator().manual_seed(1)),
    "reading torch's state": lambda: (torch.get_rng_state(), torch.initial_seed()),
    "reading random's state": random.getstate,
    "reading NumPy's state": np.random.get_state,
}


@pytest.mark.parametrize("case", NOT_COUNTED.values(), ids=NOT_COUNTED.keys())
def test_what_draws_nothing_is_no_event(case: Callable[[], object]) -> None:
    assert traced(case) == []


def test_dropout_backward_is_no_event() -> None:
    y = nn.functional.dropout(X, 0.5, True).sum()
    assert traced(y.backward) == []


def test_a_private_generator_counts_when_passed_as_generators() -> None:
    g = torch.Generator().manual_seed(0)
    events = traced(lambda: (torch.rand(3, generator=g), g.manual_seed(5)), generators=[g])
    assert [(e.source, e.kind, e.op) for e in events] == [("generator:0", "draw", "rand"),
                                                          ("generator:0", "reseed", "manual_seed")]


def test_a_loader_passed_as_generators_names_its_generator() -> None:
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(DATA, batch_size=2, shuffle=True, generator=g)
    events = traced(lambda: list(loader), generators=[loader])
    assert {e.source for e in events} == {"generator:0"}
    assert {"random_", "randperm"} <= {e.op for e in events}  # the base seed and the shuffle


def test_python_random_calls_count_once_at_the_outermost_call() -> None:
    items = [1, 2, 3]
    with trace() as tr:
        random.random(); a = sys._getframe().f_lineno  # noqa: E702
        random.choice(items); b = sys._getframe().f_lineno  # noqa: E702
        random.shuffle(items); c = sys._getframe().f_lineno  # noqa: E702
        random.gauss(0, 1); d = sys._getframe().f_lineno  # noqa: E702
        imported_random(); e = sys._getframe().f_lineno  # noqa: E702
    assert [(ev.source, ev.kind, ev.op, ev.lineno) for ev in tr.events] == [
        ("python", "draw", "random", a), ("python", "draw", "choice", b), ("python", "draw", "shuffle", c),
        ("python", "draw", "gauss", d), ("python", "draw", "random", e),
    ]


def test_reseeds_are_reseed_events() -> None:
    state = random.getstate()
    np_state = np.random.get_state()
    with trace() as tr:
        torch.manual_seed(1)
        torch.set_rng_state(torch.get_rng_state())  # the same state: no change, no event
        torch.set_rng_state(torch.manual_seed(2).get_state())
        random.seed(3)
        random.setstate(state)
    assert [(e.source, e.kind, e.op) for e in tr.events] == [
        ("torch", "reseed", "manual_seed"), ("torch", "reseed", "manual_seed"), ("python", "reseed", "seed"),
        ("python", "reseed", "setstate"),
    ]
    with trace() as tr:
        np.random.seed(4)
        abs(0)  # on 3.11, where the profiler cannot see NumPy's methods, the next call finds the change
        np.random.set_state(np_state)
    if not NUMPY_LOCATED:
        assert tr.events == []  # changed and changed back between two recorded events: not seen
    elif NUMPY_SEEN:
        assert [(e.source, e.kind, e.op) for e in tr.events] == [("numpy", "reseed", "seed"),
                                                                 ("numpy", "reseed", "set_state")]
    else:
        assert {e.source for e in tr.events} == {"numpy"}


def test_numpy_draws_are_named_at_their_line_or_by_state_on_3_11() -> None:
    with trace() as tr:
        np.random.rand(3); line = sys._getframe().f_lineno  # noqa: E702
        float(np.random.randn())
    assert {e.source for e in tr.events} == {"numpy"}
    first = tr.events[0]
    if NUMPY_SEEN:
        assert [(e.kind, e.op) for e in tr.events] == [("draw", "rand"), ("draw", "randn")]
        assert first.lineno == line
    elif not NUMPY_LOCATED:
        # Found at the trace's end: one unattributed change, after the trace's start.
        assert [e.kind for e in tr.events] == ["unattributed"] and first.after is not None
    else:
        # Found by state at the next profiled call: the same line or the next one.
        assert first.kind == "unattributed" and first.lineno in (line, line + 1) and first.after is not None


def test_a_python_draw_right_after_a_numpy_draw_is_still_named() -> None:
    # On 3.11 NumPy's change is found when the next watched call starts: it must not take
    # that call's place, which would leave the Python draw unattributed at the trace's end.
    items = [1, 2, 3]
    with trace() as tr:
        np.random.rand()
        random.random(); a = sys._getframe().f_lineno  # noqa: E702
        np.random.normal()
        random.choice(items); b = sys._getframe().f_lineno  # noqa: E702
    python = [(e.kind, e.op, e.lineno) for e in tr.events if e.source == "python"]
    assert python == [("draw", "random", a), ("draw", "choice", b)]
    assert {e.source for e in tr.events} == {"python", "numpy"}


def test_numpy_generators_passed_in_are_named() -> None:
    rng = np.random.default_rng(0)
    events = traced(lambda: rng.normal(), generators=[rng])
    assert [e.source for e in events] == ["generator:0"]
    assert events[0].kind == ("draw" if NUMPY_SEEN else "unattributed")


def test_a_draw_no_hook_sees_is_an_unattributed_event_between_its_neighbours() -> None:
    # A draw in a thread that was running before the trace: no hook of the trace sees it.
    go, done = threading.Event(), threading.Event()

    def draw_when_told() -> None:
        go.wait(10)
        torch.rand(2)
        random.random()
        done.set()

    thread = threading.Thread(target=draw_when_told)
    thread.start()
    with trace() as tr:
        torch.randn(1); before = sys._getframe().f_lineno  # noqa: E702
        go.set()
        done.wait(10)
        torch.randn(1); after = sys._getframe().f_lineno  # noqa: E702
    thread.join()
    kinds = [(e.source, e.kind, e.lineno) for e in tr.events]
    assert kinds[0] == ("torch", "draw", before) and kinds[-1] == ("torch", "draw", after)
    middle = tr.events[1:-1]
    assert {e.source for e in middle} == {"torch", "python"}
    torch_middle = next(e for e in middle if e.source == "torch")
    assert torch_middle.kind == "unattributed"
    assert torch_middle.after == f"{__file__}:{before} in {sys._getframe().f_code.co_name}"


# --- the guarantee, and tracing changes nothing -----------------------------------------------


def _hidden_draw() -> None:
    # A thread's torch op is outside the (thread-local) dispatch mode; on 3.11 its random call too.
    thread = threading.Thread(target=lambda: (torch.rand(2), random.random()))
    thread.start()
    thread.join()


def _fork_block() -> None:
    with rng_fork.fork_rng():
        torch.rand(3)
        random.random()
        np.random.rand(2)


ACTIONS: dict[str, Callable[[], object]] = {
    "torch": lambda: torch.rand(3).sum().item(),
    "dropout": lambda: nn.functional.dropout(torch.ones(4), 0.5, True).tolist(),
    "python": random.random,
    "shuffle": lambda: random.sample(range(10), 3),
    "numpy": lambda: np.random.rand(2).tolist(),
    "numpy normal": lambda: float(np.random.randn()),
    "torch reseed": lambda: torch.manual_seed(7) and None,
    "python reseed": lambda: random.seed(8),
    "fork": _fork_block,
    "hidden": _hidden_draw,
    "nothing": lambda: torch.ones(2).tolist(),
    "eval dropout": lambda: nn.Dropout(0.5).eval()(torch.ones(3)).tolist(),
}


def _run(program: list[str]) -> tuple[list[object], list[set[str]]]:
    """What each step returned, and which sources each step changed."""
    outputs: list[object] = []
    changed: list[set[str]] = []
    for name in program:
        before = rng_fork.get_rng_state()
        outputs.append(ACTIONS[name]())
        changed.append(set(rng_fork.diff(before, rng_fork.get_rng_state())))
    return outputs, changed


def test_random_programs_name_every_changed_source_and_draw_the_same() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=30, deadline=None, derandomize=True)
    @given(st.lists(st.sampled_from(sorted(ACTIONS)), max_size=8), st.integers(0, 2**32 - 1))
    def check(program: list[str], seed: int) -> None:
        rng_fork.seed_all(seed)
        expected, changed = _run(program)
        end = rng_fork.get_rng_state()
        rng_fork.seed_all(seed)
        with trace() as tr:
            got, _ = _run(program)
        assert got == expected
        assert rng_fork.get_rng_state() == end
        named = {e.source for e in tr.events}
        assert set().union(*changed) <= named, (program, tr.report())
        if "hidden" not in program:
            assert all(e.kind != "unattributed" or e.source == "numpy" for e in tr.events), tr.report()

    check()


def test_tracing_changes_no_number_of_a_training_loop() -> None:
    def train() -> list[float]:
        model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))
        loader = DataLoader(TensorDataset(torch.randn(16, 4), torch.randn(16, 1)), batch_size=4, shuffle=True)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        for _ in range(2):
            for x, y in loader:
                loss = nn.functional.mse_loss(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        return [*losses, random.random(), float(np.random.rand()), torch.rand(1).item()]

    seed_globals(0)
    expected = train()
    seed_globals(0)
    with trace() as tr:
        got = train()
    assert got == expected
    ops = {e.op for e in tr.events}
    assert {"uniform_", "bernoulli_", "random_", "randperm"} - ops == {"randperm"}  # randperm: private generator


# --- hooks, nesting, CUDA --------------------------------------------------------------------


def _hooks() -> tuple[object, ...]:
    monitoring = getattr(sys, "monitoring", None)
    tools = tuple(monitoring.get_tool(i) for i in range(6)) if monitoring is not None else ()
    return (sys.getprofile(), threading._profile_hook, torch._C._len_torch_dispatch_stack(),
            rng_fork._swap._load_all, tools)


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt, SystemExit])
def test_hooks_come_off_on_every_exit_path(error: type[BaseException]) -> None:
    before = _hooks()
    with trace():
        assert _hooks() != before
    assert _hooks() == before
    with pytest.raises(error), trace():
        torch.rand(1)
        raise error()
    assert _hooks() == before


def test_import_installs_nothing() -> None:
    import subprocess

    code = (
        "import sys, threading, torch, rng_fork\n"
        "m = getattr(sys, 'monitoring', None)\n"
        "assert sys.getprofile() is None and threading._profile_hook is None\n"
        "assert torch._C._len_torch_dispatch_stack() == 0\n"
        "assert m is None or all(m.get_tool(i) is None for i in range(6))\n"
        "assert 'rng_fork._tracing.hub' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_traces_nest_in_forks_streams_and_themselves() -> None:
    stream = rng_fork.RngStream(seed=0)
    with trace() as outer:
        with rng_fork.fork_rng(), trace() as in_fork:
            torch.rand(1)
        with stream, trace() as in_stream:
            random.random()
        with trace() as inner, trace() as innermost:
            torch.randn(1)
    assert [(e.source, e.op) for e in in_fork.events] == [("torch", "rand")]
    assert [(e.source, e.op) for e in in_stream.events] == [("python", "random")]
    assert [(e.source, e.op) for e in inner.events] == [("torch", "randn")]
    assert [(e.source, e.op) for e in innermost.events] == [("torch", "randn")]
    outer_ops = [(e.source, e.kind, e.op) for e in outer.events]
    # What the fork and the stream put back is a reseed named after them, not an unattributed change.
    assert ("torch", "reseed", "fork_rng.__exit__") in outer_ops
    # The stream's first entry seeds every source, NumPy's too (which 3.11's hooks do not see):
    # rng_fork's own reseeds, named after the entry; its exit puts the caller's states back.
    entry = {(source, "reseed", "RngStream.__enter__") for source in ("python", "numpy", "torch")}
    assert entry <= set(outer_ops)
    assert ("python", "reseed", "RngStream.__exit__") in outer_ops
    assert [kind for _, kind, _ in outer_ops if kind == "unattributed"] == [], outer.report()
    assert outer_ops[-1] == ("torch", "draw", "randn")


def test_never_initializes_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise AssertionError("CUDA initialized")

    monkeypatch.setattr(torch.cuda, "_lazy_init", refuse)
    with trace() as tr:
        torch.rand(2)
        torch.manual_seed(0)  # queues a CUDA seed in a CUDA build: still not initialized
        random.random()
        np.random.rand()
    assert not torch.cuda.is_initialized()
    assert {e.source for e in tr.events} == {"torch", "python", "numpy"}


def test_threads_started_during_the_trace_are_seen() -> None:
    with trace() as tr:
        thread = threading.Thread(target=random.random)
        thread.start()
        thread.join()
    assert [(e.source, e.kind, e.op) for e in tr.events] == [("python", "draw", "random")]


# --- profilers installed before ----------------------------------------------------------------


def _marker_work() -> int:
    return sum(range(10))


def test_cprofile_keeps_profiling_through_the_trace_and_after() -> None:
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    before = sys.getprofile()
    profiler.enable()
    installed = sys.getprofile()
    try:
        with trace() as tr:
            _marker_work()
            torch.rand(1)
        assert sys.getprofile() is installed
        _marker_work()
    finally:
        profiler.disable()
    assert sys.getprofile() is before
    calls = {func[2]: stat[1] for func, stat in pstats.Stats(profiler).stats.items()}  # type: ignore[attr-defined]
    assert calls["_marker_work"] == 2
    assert [e.op for e in tr.events] == ["rand"]


def test_a_python_profile_function_keeps_its_events() -> None:
    seen: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            seen.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        with trace():
            _marker_work()
        restored = sys.getprofile()
    finally:
        sys.setprofile(None)
    assert restored is profile
    assert "_marker_work" in seen


def test_coverage_measures_inside_the_trace(tmp_path: Any) -> None:
    coverage = pytest.importorskip("coverage")
    module = tmp_path / "covered_module.py"
    module.write_text("import random\n\ndef work():\n    x = random.random()\n    return x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        cov = coverage.Coverage(data_file=None, include=[str(module)])
        cov.start()
        import covered_module

        with trace() as tr:
            covered_module.work()
        cov.stop()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("covered_module", None)
    lines = cov.get_data().lines(str(module))
    assert {4, 5} <= set(lines or [])
    assert [(e.op, e.lineno, e.filename) for e in tr.events] == [("random", 4, str(module))]


# --- the report --------------------------------------------------------------------------------


def test_summary_groups_and_report_tabulates_per_source() -> None:
    with trace() as tr:
        for _ in range(3):
            torch.rand(1); line = sys._getframe().f_lineno  # noqa: E702
        random.random()
    rows = tr.summary()
    assert (rows[0].source, rows[0].op, rows[0].lineno, rows[0].count) == ("torch", "rand", line, 3)
    assert (rows[1].source, rows[1].op, rows[1].count) == ("python", "random", 1)
    report = tr.report()
    assert "torch (3 event(s))" in report and "python (1 event(s))" in report
    assert f"test_trace.py:{line} in test_summary_groups_and_report_tabulates_per_source" in report
    assert tr.to_json()["events"][0]["op"] == "rand"
    with trace() as empty:
        pass
    assert "no generator was consumed" in empty.report()


class _Named:
    def method(self) -> Any:
        return sys._getframe()

    @classmethod
    def from_class(cls) -> Any:
        return sys._getframe()


class _Inherits(_Named):
    pass


def _module_function() -> Any:
    return sys._getframe()


def test_reseeds_are_named_by_qualified_name_on_python_310_too() -> None:
    """Python 3.10's code objects have no co_qualname: a method's class is found from its first argument."""
    from rng_fork._tracing.hub import method_qualname

    frames = {
        "_Named.method": _Inherits().method(),  # the class that defines it, as co_qualname says
        "_Named.from_class": _Inherits.from_class(),
        "_module_function": _module_function(),
    }
    for expected, frame in frames.items():
        assert method_qualname(frame) == expected
        assert getattr(frame.f_code, "co_qualname", expected) == expected
