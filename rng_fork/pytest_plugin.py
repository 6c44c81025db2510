"""The pytest plugin: tests that cannot move each other's random numbers, and a report of who draws.

pytest loads it wherever rng_fork is installed (the ``pytest11`` entry point
``rng_fork``; ``-p no:rng_fork`` turns it off). It changes nothing until asked:

- ``--rng-isolate`` (ini ``rng_isolate = true``): every test, its setup,
  fixtures and teardown included, runs in a fork of every generator. It starts
  from the state the session started with, or, with ``--rng-seed N`` (ini
  ``rng_seed = N``), from ``seed_all(seed_for(node id, N))``;
- ``--rng-report`` (ini ``rng_report = true``): after the run, the tests that
  drew from the global generators (per source: how often, and the first line),
  and those that left them changed;
- the markers ``rng_untouched`` and ``rng_seed(N)``, the fixtures
  ``rng_fork_isolated`` and ``rng_stream``.

It also gives pytest-randomly a ``random_seeder``: :func:`randomly_reseed`.

Example::

    pytest --rng-isolate --rng-seed 7 --rng-report
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from ._checks import SEED_LIMIT, check_seed, short_repr
from .detect import assert_untouched, diff
from .errors import RngTouchedError
from .fork import fork_rng
from .isolate import RngStream
from .state import RngState, get_rng_state, seed_families, set_rng_state
from .trace import RngEvent, trace

FINDINGS_ATTRIBUTE = "rng_fork_findings"
"""The attribute of a test's teardown report that holds what ``--rng-report`` found (plain data,
so pytest-xdist carries it from its workers to the controller)."""

# pytest-randomly seeds these two itself, in its own way (seeds above 2**32 included).
_SEEDED_BY_RANDOMLY = ("python", "numpy")


@dataclass(frozen=True)
class _Settings:
    """What the command line and the ini file asked for (the command line wins)."""

    isolate: bool
    seed: int | None
    report: bool


_SETTINGS = pytest.StashKey["_Settings"]()
_SESSION_START = pytest.StashKey["_SessionStart"]()
_MARKER_ERROR = pytest.StashKey[Exception]()
_KEEPS_SEED = pytest.StashKey[bool]()

_kept_state: RngState | None = None
"""Where the test that keeps rng_fork's seed against pytest-randomly's reseeds has got to (its last phase's end)."""


def seed_for(nodeid: str, rng_seed: int | None = None, *, stream: bool = False) -> int:
    """The seed a test starts from under ``--rng-seed rng_seed`` (``stream=True``: its ``rng_stream``'s).

    A SHA-256 of the seed and the node id, so it is the same in every run, in
    any order and on any pytest-xdist worker. To reproduce a test's numbers
    outside pytest, seed with it.

    Example::

        rng_fork.seed_all(seed_for("tests/test_model.py::test_dropout", 7))
    """
    purpose = "rng_stream" if stream else "test"
    text = f"rng_fork\0{purpose}\0{'' if rng_seed is None else rng_seed}\0{nodeid}"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:4], "little")


def randomly_reseed(seed: int) -> None:
    """pytest-randomly's ``random_seeder``: seed torch, every device and every registered source.

    pytest-randomly calls it (the ``pytest_randomly.random_seeder`` entry
    point) wherever it reseeds: at the session's start and before each test's
    setup, call and teardown. Python's ``random`` and NumPy's global generator
    are left to pytest-randomly, which seeds them itself; the other sources get
    ``seed % 2**32``. Uninitialized CUDA, XPU and MTIA are seeded lazily, as
    ``torch.manual_seed`` does, and not initialized.

    Example::

        randomly_reseed(1234)    # as pytest-randomly does before a test
    """
    if _kept_state is not None:
        # The test runs from rng_fork's seed (--rng-seed, @pytest.mark.rng_seed): that choice wins,
        # so pytest-randomly's reseed between its phases is undone and its draws go on unmoved.
        set_rng_state(_kept_state, strict=False)
        return
    seed_families(seed % SEED_LIMIT, caller="rng_fork's seeder for pytest-randomly", skip=_SEEDED_BY_RANDOMLY)


class _SessionStart:
    """The state of every generator when the session started, put back at the start of each test.

    A generator that appears later (a device initialized during the session)
    joins it with the state it has when the first test after that starts.
    """

    def __init__(self) -> None:
        self.state = get_rng_state()

    def put_back(self) -> None:
        live = get_rng_state()
        new = [name for name in live.names if name not in self.state.names]
        if new:
            joined = self.state.state_dict()
            fresh = live.state_dict()
            joined.update({name: fresh[name] for name in new})
            self.state = RngState.from_state_dict(joined)
        set_rng_state(self.state, strict=False)


# ---------------------------------------------------------------------------------------------
# Options, markers, settings


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rng_fork", "rng_fork: randomness per test")
    group.addoption(
        "--rng-isolate", action="store_true", dest="rng_isolate", default=None,
        help="run every test (setup, fixtures, teardown) in a fork of every RNG, from the session's starting "
             "state or, with --rng-seed, from a seed per test (ini: rng_isolate)",
    )
    group.addoption(
        "--no-rng-isolate", action="store_false", dest="rng_isolate", default=None,
        help="turn --rng-isolate off, whatever the ini file or --rng-seed say",
    )
    group.addoption(
        "--rng-seed", action="store", type=int, dest="rng_seed", default=None, metavar="N",
        help="start every test from seed_all of a seed made from N and its node id; implies --rng-isolate "
             "(ini: rng_seed)",
    )
    group.addoption(
        "--rng-report", action="store_true", dest="rng_report", default=None,
        help="after the run, list the tests that drew from the global generators, where, and those that left "
             "them changed (ini: rng_report)",
    )
    group.addoption(
        "--no-rng-report", action="store_false", dest="rng_report", default=None,
        help="turn --rng-report off, whatever the ini file says",
    )
    parser.addini("rng_isolate", "run every test in a fork of every RNG (as --rng-isolate)", type="bool",
                  default=False)
    # pytest 8.4 has int options (native TOML integers); before, a string that is parsed here.
    seed_type: Literal["int", "string"] = "int" if pytest.version_tuple >= (8, 4) else "string"
    parser.addini("rng_seed", "seed every test from this and its node id (as --rng-seed)", type=seed_type,
                  default=None)
    parser.addini("rng_report", "report the tests that draw from the global generators (as --rng-report)",
                  type="bool", default=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "rng_untouched: fail the test if its body consumes or changes any random generator (rng_fork)"
    )
    config.addinivalue_line(
        "markers", "rng_seed(seed): run the test in a fork of every RNG, starting from seed_all(seed) (rng_fork)"
    )
    settings = _settings(config)
    config.stash[_SETTINGS] = settings
    if settings.report:
        config.pluginmanager.register(_RngReport(config), "rng_fork_report")


def _settings(config: pytest.Config) -> _Settings:
    seed: int | None = config.getoption("rng_seed")
    if seed is None:
        try:
            seed = _ini_seed(config.getini("rng_seed"))
        except pytest.UsageError as exc:  # pytest's own message does not say which option
            raise pytest.UsageError(f"rng_seed in the configuration must be an integer ({exc})") from None
    isolate: bool | None = config.getoption("rng_isolate")
    if isolate is None:
        isolate = bool(config.getini("rng_isolate")) or seed is not None
    report: bool | None = config.getoption("rng_report")
    if report is None:
        report = bool(config.getini("rng_report"))
    return _Settings(isolate=isolate, seed=seed, report=report)


def _ini_seed(value: object) -> int | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise pytest.UsageError(f"rng_seed in the configuration must be an integer, not {short_repr(value)}") from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash[_SETTINGS]
    lines = []
    if settings.isolate:
        start = ("the state the session started with" if settings.seed is None
                 else f"seed_all(seed_for(node id, {settings.seed}))")
        lines.append(f"rng_fork: every test runs in a fork of every RNG, starting from {start}")
    if settings.report:
        lines.append("rng_fork: --rng-report: the tests that draw from the global generators are listed at the end")
    return lines


# ---------------------------------------------------------------------------------------------
# Isolation: --rng-isolate, --rng-seed, @pytest.mark.rng_seed


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    settings = session.config.stash[_SETTINGS]
    if settings.isolate and settings.seed is None:
        session.config.stash[_SESSION_START] = _SessionStart()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    settings = item.config.stash[_SETTINGS]
    with contextlib.ExitStack() as around:
        # A test interrupted before its teardown: its trace still closes, inside the fork.
        around.callback(_stop_watch, item)
        try:
            seed = _marker_seed(item)
        except (TypeError, ValueError) as exc:
            item.stash[_MARKER_ERROR] = exc  # raised in setup, so that it fails this test only
            return (yield)
        if seed is None and settings.isolate and settings.seed is not None:
            seed = seed_for(item.nodeid, settings.seed)
        if seed is not None or settings.isolate:
            around.enter_context(fork_rng(seed=seed))
            # A marked test runs in its own fork whatever the options: it cannot leak.
            item.stash[_CANNOT_LEAK] = not settings.isolate
            if seed is None:
                item.config.stash[_SESSION_START].put_back()
            around.callback(_stop_watch, item)
            if seed is not None and _randomly_reseeds(item.config):
                item.stash[_KEEPS_SEED] = True
                around.callback(_keep, None)
                _keep(get_rng_state())
        return (yield)


def _keep(state: RngState | None) -> None:
    global _kept_state
    _kept_state = state


def _stop_watch(item: pytest.Item) -> None:
    watch = item.stash.get(_WATCH, None)
    if watch is not None:
        watch.stop()


def _marker_seed(item: pytest.Item) -> int | None:
    marker = item.get_closest_marker("rng_seed")
    if marker is None:
        return None
    if len(marker.args) != 1 or marker.kwargs:
        raise TypeError("@pytest.mark.rng_seed takes one seed, an int in [0, 2**32): @pytest.mark.rng_seed(0)")
    try:
        return check_seed(marker.args[0], allow_none=False)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"@pytest.mark.rng_seed: {exc}") from None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    try:
        result = yield
    finally:
        if item.stash.get(_KEEPS_SEED, False):
            _keep(get_rng_state())
    # After pytest's own setup, which its teardown expects to have run.
    error = item.stash.get(_MARKER_ERROR, None)
    if error is not None:
        pytest.fail(f"{type(error).__name__}: {error}", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    try:
        return (yield)
    finally:
        if item.stash.get(_KEEPS_SEED, False):
            _keep(get_rng_state())


# ---------------------------------------------------------------------------------------------
# @pytest.mark.rng_untouched


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    marker = pyfuncitem.get_closest_marker("rng_untouched")
    if marker is None:
        return (yield)
    if marker.args or marker.kwargs:
        pytest.fail("@pytest.mark.rng_untouched takes no arguments", pytrace=False)
    # Around the test function only, inside pytest-randomly's reseeds and after the fixtures.
    check = assert_untouched(explain=True)
    check.__enter__()
    try:
        result = yield
    except BaseException as exc:
        check.__exit__(type(exc), exc, exc.__traceback__)
        raise
    try:
        check.__exit__(None, None, None)
    except RngTouchedError as err:
        touched = err
    else:
        return result
    pytest.fail(
        f"@pytest.mark.rng_untouched: {pyfuncitem.name} consumed or changed randomness of: "
        f"{', '.join(touched.sources)}\n{touched.explanation or ''}".rstrip(),
        pytrace=False,
    )


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def rng_fork_isolated() -> Iterator[None]:
    """Run the test in a fork of every RNG: what it draws reaches no later test.

    The fork opens where pytest sets the fixture up: request it first (or with
    ``@pytest.mark.usefixtures``) to cover the other fixtures too. The test
    starts from the state it finds; ``--rng-isolate`` does this for every test.

    Example::

        def test_augment(rng_fork_isolated):
            augment(torch.rand(8, 3, 32, 32))
    """
    with fork_rng():
        yield


@pytest.fixture
def rng_stream(request: pytest.FixtureRequest) -> RngStream:
    """A private :class:`~rng_fork.RngStream` for the test, seeded from its node id (and ``--rng-seed``).

    It is handed to the test, not entered: the test enters it around the code
    that should draw from it, as often as it likes, and the stream goes on from
    its last draw each time. Those draws are the same in every run, in any
    order and on any worker, and never move the global generators.

    Example::

        def test_dropout_masks(rng_stream):
            with rng_stream:
                first = torch.rand(4)
            with rng_stream:
                second = torch.rand(4)      # the stream's next numbers, not the global ones
    """
    rng_seed = request.config.stash[_SETTINGS].seed
    return RngStream(seed=seed_for(request.node.nodeid, rng_seed, stream=True))


# ---------------------------------------------------------------------------------------------
# --rng-report


class _Watch:
    """One test under ``--rng-report``: a trace, and the state before (for the leak check)."""

    def __init__(self, rootpath: Path, check_leaks: bool, plugin_code: tuple[str, ...]) -> None:
        self._rootpath = rootpath
        self._plugin_code = plugin_code
        self._before = get_rng_state() if check_leaks else None
        self._trace = trace()
        self._trace.__enter__()
        self.findings: dict[str, Any] | None = None

    def stop(self) -> dict[str, Any]:
        """Close the trace (once) and return what it found, as plain data."""
        if self.findings is not None:
            return self.findings
        self._trace.__exit__(None, None, None)
        leaked = None
        if self._before is not None:
            after = get_rng_state()
            leaked = [name for name in diff(self._before, after) if name in self._before.names and name in after.names]
        failure = self._trace.failure
        self.findings = {
            "drew": self._draws(self._trace.events),
            "leaked": leaked,
            "trace_failure": None if failure is None else f"{type(failure).__name__}: {failure}",
        }
        return self.findings

    def _draws(self, events: list[RngEvent]) -> list[dict[str, Any]]:
        """Per source, in order of first draw: the count and the first draw's site."""
        by_source: dict[str, dict[str, Any]] = {}
        for event in events:
            # Seeds and states put in (rng_fork's restores), and what installed plugins do between
            # the phases (pytest-randomly's reseeds, unattributed on NumPy where Python is 3.11).
            if event.kind == "reseed" or event.filename.startswith(self._plugin_code):
                continue
            entry = by_source.get(event.source)
            if entry is None:
                by_source[event.source] = {
                    "source": event.source,
                    "count": 1,
                    "where": f"{self._short(event.filename)}:{event.lineno} in {event.function}",
                    "op": event.op or "unattributed",
                }
            else:
                entry["count"] += 1
        return list(by_source.values())

    def _short(self, filename: str) -> str:
        try:
            relative = os.path.relpath(filename, self._rootpath)
        except ValueError:  # another drive on Windows
            return filename
        return filename if relative.startswith("..") else relative


_WATCH = pytest.StashKey[_Watch]()
_CANNOT_LEAK = pytest.StashKey[bool]()
"""Set for a test that a marker runs in a fork of its own (``rng_seed``): its leak check is left out."""


class _RngReport:
    """The ``--rng-report`` plugin: watches each test where it runs, and prints the report where pytest
    prints its summary (the pytest-xdist controller, with every worker's findings)."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self._findings: list[tuple[str, dict[str, Any]]] = []
        self._leaks_checked = not _randomly_reseeds(config)
        self._plugin_code: tuple[str, ...] | None = None

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, object, object]:
        if self._plugin_code is None:
            self._plugin_code = _installed_plugin_code(self._config)
        check_leaks = self._leaks_checked and not item.stash.get(_CANNOT_LEAK, False)
        item.stash[_WATCH] = _Watch(item.config.rootpath, check_leaks, self._plugin_code)
        return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        try:
            return (yield)
        finally:
            watch = item.stash.get(_WATCH, None)
            if watch is not None:
                watch.stop()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        watch = item.stash.get(_WATCH, None)
        if call.when == "teardown" and watch is not None and watch.findings is not None:
            setattr(report, FINDINGS_ATTRIBUTE, watch.findings)
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        findings = getattr(report, FINDINGS_ATTRIBUTE, None)
        if isinstance(findings, dict):
            self._findings.append((report.nodeid, findings))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if hasattr(self._config, "workerinput"):  # a pytest-xdist worker: the controller reports
            return
        terminalreporter.write_sep("=", "rng_fork report")
        for line in format_findings(self._findings, self._leaks_checked, self._config.stash[_SETTINGS].isolate):
            terminalreporter.write_line(line)


def _installed_plugin_code(config: pytest.Config) -> tuple[str, ...]:
    """The files (a package's folder) of the plugins installed through entry points."""
    code = []
    for plugin, _ in config.pluginmanager.list_plugin_distinfo():
        filename = getattr(plugin, "__file__", None)
        if isinstance(filename, str):
            folder, name = os.path.split(os.path.abspath(filename))
            code.append(folder + os.sep if name == "__init__.py" else filename)
    return tuple(code)


def _randomly_reseeds(config: pytest.Config) -> bool:
    return config.pluginmanager.hasplugin("randomly") and bool(config.getoption("randomly_reset_seed", False))


def format_findings(findings: list[tuple[str, dict[str, Any]]], leaks_checked: bool, isolated: bool) -> list[str]:
    """The lines of the ``--rng-report`` section, from each test's node id and findings.

    Example::

        format_findings([("test_a.py::test_one", {"drew": [], "leaked": [], "trace_failure": None})], True, False)
    """
    drawing = [(nodeid, found) for nodeid, found in findings if found["drew"]]
    lines = [f"{len(drawing)} of {len(findings)} test(s) drew from the global generators"
             + (":" if drawing else "")]
    for nodeid, found in drawing:
        lines.append(f"  {nodeid}")
        for row in found["drew"]:
            count = f"{row['count']} draw" + ("s" if row["count"] != 1 else "")
            lines.append(f"    {row['source']}: {count}, first at {row['where']} ({row['op']})")
    if not leaks_checked:
        lines.append("leaks not checked: pytest-randomly reseeds every generator before each test "
                     "(--randomly-dont-reset-seed to check them)")
    else:
        leakers = [(nodeid, found["leaked"]) for nodeid, found in findings if found["leaked"]]
        undone = "; --rng-isolate put them back" if isolated and leakers else ""
        lines.append(f"{len(leakers)} test(s) left the global generators changed for the tests after them{undone}"
                     + (":" if leakers else ""))
        lines += [f"  {nodeid}: {', '.join(leaked)}" for nodeid, leaked in leakers]
    failures = [(nodeid, found["trace_failure"]) for nodeid, found in findings if found.get("trace_failure")]
    lines += [f"  the tracer failed in {nodeid} ({failure}); its list may be incomplete"
              for nodeid, failure in failures]
    return lines
