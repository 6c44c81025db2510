"""The pytest plugin (rng_fork.pytest_plugin), run on small suites through pytester.

In-process runs share this process's generators: each outer test starts seeded
(conftest) and computes what the inner tests should see from the same calls.
pytest-randomly is installed, so every inner run names it: off, or on with a seed.
"""

from __future__ import annotations

import json
import random
import re
import zlib

import numpy as np
import pytest
import torch

import rng_fork
from rng_fork.pytest_plugin import FINDINGS_ATTRIBUTE, format_findings, randomly_reseed, seed_for

pytest_plugins = ["pytester"]

OFF = ("-p", "no:randomly", "-p", "no:cacheprovider")

CONFTEST = """
import json, random, re
from pathlib import Path
import numpy as np, pytest, torch

@pytest.fixture
def record(request):
    def write():
        values = [random.random(), float(np.random.rand()), torch.rand(2).tolist()]
        folder = Path(str(request.config.rootpath)) / "records"
        folder.mkdir(exist_ok=True)
        (folder / (re.sub(r"\\W", "_", request.node.nodeid) + ".json")).write_text(json.dumps(values))
        return values
    return write
"""

# The second test passes only if it starts where the session started: after the first one, it fails.
ORDER = """
import random
import numpy as np, torch
import rng_fork

with rng_fork.fork_rng():
    EXPECTED = [random.random(), float(np.random.rand()), torch.rand(3).tolist()]

def test_draws():
    random.random(); np.random.rand(); torch.rand(5)

def test_sees_the_start():
    assert [random.random(), float(np.random.rand()), torch.rand(3).tolist()] == EXPECTED
"""

SEEDED = """
import torch

def test_one(record):
    record()

def test_two(record):
    record()
    torch.rand(4)
"""


def draws(seed: int | None = None, *, python_seed: int | None = None) -> list[object]:
    """What ``record()`` gives from ``seed`` (in a fork, so this process's generators stay put)."""
    with rng_fork.fork_rng(seed=seed):
        if python_seed is not None:
            random.seed(python_seed)
        return [random.random(), float(np.random.rand()), torch.rand(2).tolist()]


def records(pytester: pytest.Pytester) -> dict[str, object]:
    folder = pytester.path / "records"
    found = {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}
    for path in folder.glob("*.json"):
        path.unlink()
    return found


def key(nodeid: str) -> str:
    return re.sub(r"\W", "_", nodeid)


def test_isolation_makes_the_order_irrelevant(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_order=ORDER)
    first, second = "test_order.py::test_draws", "test_order.py::test_sees_the_start"
    # Without the plugin's isolation the order decides; the plugin loaded but not asked changes nothing.
    pytester.runpytest(*OFF, first, second).assert_outcomes(passed=1, failed=1)
    pytester.runpytest(*OFF, second, first).assert_outcomes(passed=2)
    pytester.runpytest(*OFF, "--rng-isolate", first, second).assert_outcomes(passed=2)
    result = pytester.runpytest(*OFF, "--rng-isolate", "--rng-report", second, first)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "rng_fork: every test runs in a fork of every RNG, starting from the state the session started with",
        "*= rng_fork report =*",
        "2 of 2 test(s) drew from the global generators:",
        "  test_order.py::test_sees_the_start",
        "    python: 1 draw, first at test_order.py:12 in test_sees_the_start (random)",
        # NumPy's legacy methods are found by state on Python 3.11: "unattributed", at the same line.
        "    numpy: 1 draw, first at test_order.py:12 in test_sees_the_start (*)",
        "    torch: 1 draw, first at test_order.py:12 in test_sees_the_start (rand)",
        "  test_order.py::test_draws",
        "    python: 1 draw, first at test_order.py:9 in test_draws (random)",
        "    numpy: 1 draw, first at test_order.py:9 in test_draws (*)",
        "    torch: 1 draw, first at test_order.py:9 in test_draws (rand)",
        "2 test(s) left the global generators changed for the tests after them; --rng-isolate put them back:",
        "  test_order.py::test_sees_the_start: python, numpy, torch",
        "  test_order.py::test_draws: python, numpy, torch",
    ])


def test_the_plugin_changes_nothing_unless_asked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_order=ORDER)
    rng_fork.seed_all(5)
    pytester.runpytest(*OFF, "-p", "no:rng_fork").assert_outcomes(passed=1, failed=1)
    without_plugin = rng_fork.get_rng_state()
    rng_fork.seed_all(5)
    result = pytester.runpytest(*OFF)
    result.assert_outcomes(passed=1, failed=1)
    assert rng_fork.get_rng_state() == without_plugin
    assert "rng_fork:" not in result.stdout.str() and "rng_fork report" not in result.stdout.str()
    # Isolated, the session leaves this process's generators where they were.
    rng_fork.seed_all(5)
    before = rng_fork.get_rng_state()
    pytester.runpytest(*OFF, "--rng-isolate").assert_outcomes(passed=2)
    assert rng_fork.get_rng_state() == before


def test_a_seed_per_test_whatever_the_order(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_seeded=SEEDED)
    one, two = "test_seeded.py::test_one", "test_seeded.py::test_two"
    pytester.runpytest(*OFF, "--rng-seed", "7", one, two).assert_outcomes(passed=2)
    in_order = records(pytester)
    pytester.runpytest(*OFF, "--rng-seed", "7", two, one).assert_outcomes(passed=2)
    assert records(pytester) == in_order
    assert in_order == {key(one): draws(seed_for(one, 7)), key(two): draws(seed_for(two, 7))}
    assert in_order[key(one)] != in_order[key(two)]
    pytester.runpytest(*OFF, "--rng-seed", "8", one).assert_outcomes(passed=1)
    assert records(pytester) == {key(one): draws(seed_for(one, 8))}


def test_seed_for_is_stable_and_in_range() -> None:
    # A hash of its inputs: these values are what every run, order and worker gets.
    assert seed_for("tests/test_model.py::test_dropout", 7) == seed_for("tests/test_model.py::test_dropout", 7)
    seeds = {seed_for(f"t.py::test_{i}", base) for i in range(50) for base in (None, 0, 7)}
    assert len(seeds) == 150 and all(0 <= s < 2**32 for s in seeds)
    assert seed_for("t.py::test_a") != seed_for("t.py::test_a", stream=True)


@pytest.mark.slow
def test_xdist_workers_seed_and_report_as_one_process(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_seeded=SEEDED, test_drawing="import torch\n\ndef test_draws():\n    torch.rand(5)\n")
    one, two = "test_seeded.py::test_one", "test_seeded.py::test_two"
    result = pytester.runpytest_subprocess(*OFF, "-n", "2", "--rng-seed", "7", "--rng-report")
    result.assert_outcomes(passed=3)
    assert records(pytester) == {key(one): draws(seed_for(one, 7)), key(two): draws(seed_for(two, 7))}
    # The findings come from the workers: every test is in the controller's report.
    result.stdout.fnmatch_lines(["3 of 3 test(s) drew from the global generators:"])
    result.stdout.fnmatch_lines(["  test_drawing.py::test_draws",
                                 "    torch: 1 draw, first at test_drawing.py:4 in test_draws*"])
    result.stdout.fnmatch_lines(["  test_seeded.py::test_two", "    python: 1 draw, first at conftest.py:8 in write*",
                                 "    torch: 2 draws, first at conftest.py:8 in write*"])
    result.stdout.fnmatch_lines(["3 test(s) left the global generators changed*"])


UNTOUCHED = """
import random
import pytest, torch

@pytest.mark.rng_untouched
def test_logs_only():
    print(torch.ones(2).mean())

@pytest.mark.rng_untouched
def test_draws_anyway():
    torch.ones(2)
    torch.randn(2)

@pytest.mark.rng_untouched
def test_fails_on_its_own():
    random.random()
    assert False, "its own failure"

@pytest.mark.rng_untouched
def test_fixtures_are_not_checked(record):
    pass

@pytest.mark.rng_seed(3)
def test_seeded(record):
    record()

def test_after_the_seeded_one(record):
    record()

@pytest.mark.rng_seed("three")
def test_bad_seed():
    pass

@pytest.mark.rng_untouched(1)
def test_bad_untouched():
    pass
"""


def test_markers(pytester: pytest.Pytester) -> None:
    # Every test has a fixture that draws: rng_untouched checks the test's body only.
    pytester.makeconftest(CONFTEST + "\n@pytest.fixture(autouse=True)\ndef drawing():\n    torch.rand(1)\n")
    pytester.makepyfile(test_markers=UNTOUCHED)
    result = pytester.runpytest(*OFF, "--strict-markers")
    result.assert_outcomes(passed=4, failed=3, errors=1)
    result.stdout.fnmatch_lines([
        "*@pytest.mark.rng_untouched: test_draws_anyway consumed or changed randomness of: torch",
        "  torch:",
        "    */test_markers.py:11 in test_draws_anyway: randn (draw)",
    ])
    result.stdout.fnmatch_lines(["*AssertionError: its own failure*"])
    result.stdout.fnmatch_lines(["*@pytest.mark.rng_untouched takes no arguments*"])
    result.stdout.fnmatch_lines(["TypeError: @pytest.mark.rng_seed: seed must be an int in *, not str"])
    found = records(pytester)
    # The marked test starts from seed_all(3) after its fixture's draw, and the next one does not see it.
    with rng_fork.fork_rng(seed=3):
        torch.rand(1)
        seeded = draws()
    assert found[key("test_markers.py::test_seeded")] == seeded
    assert found[key("test_markers.py::test_after_the_seeded_one")] != seeded


FIXTURES = """
import random
import numpy as np, torch
import rng_fork

with rng_fork.fork_rng():
    EXPECTED = [random.random(), float(np.random.rand()), torch.rand(3).tolist()]

def test_draws_in_a_fork(rng_fork_isolated):
    random.random(); np.random.rand(); torch.rand(5)

def test_sees_the_start():
    assert [random.random(), float(np.random.rand()), torch.rand(3).tolist()] == EXPECTED

def test_stream(rng_stream, record):
    before = rng_fork.get_rng_state()
    with rng_stream:
        first = torch.rand(2).tolist()
    assert rng_fork.get_rng_state() == before
    with rng_stream:
        second = torch.rand(2).tolist()
    assert first != second
    print("STREAM", first, second, rng_stream.seed)
"""


def test_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_fixtures=FIXTURES)
    result = pytester.runpytest(*OFF, "-s")
    result.assert_outcomes(passed=3)
    nodeid = "test_fixtures.py::test_stream"
    with rng_fork.fork_rng(seed=seed_for(nodeid, stream=True)):
        expected = [torch.rand(2).tolist(), torch.rand(2).tolist()]
    assert f"STREAM {expected[0]} {expected[1]} {seed_for(nodeid, stream=True)}\n" in result.stdout.str()
    # --rng-seed changes the stream's seed too.
    result = pytester.runpytest(*OFF, "-s", "--rng-seed", "1", "-k", "stream")
    assert re.search(rf"STREAM .* {seed_for(nodeid, 1, stream=True)}\n", result.stdout.str())


def test_ini_options_and_the_command_line_over_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_order=ORDER)
    pytester.makeini("[pytest]\nrng_isolate = true\nrng_report = true\n")
    result = pytester.runpytest(*OFF)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*= rng_fork report =*"])
    result = pytester.runpytest(*OFF, "--no-rng-isolate", "--no-rng-report")
    result.assert_outcomes(passed=1, failed=1)
    assert "rng_fork report" not in result.stdout.str()

    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_seeded=SEEDED)
    one = "test_seeded.py::test_one"
    pytester.makeini("[pytest]\nrng_seed = 11\n")
    pytester.runpytest(*OFF, one).assert_outcomes(passed=1)
    assert records(pytester) == {key(one): draws(seed_for(one, 11))}
    pytester.runpytest(*OFF, "--rng-seed", "12", one).assert_outcomes(passed=1)
    assert records(pytester) == {key(one): draws(seed_for(one, 12))}
    pytester.makeini("[pytest]\nrng_seed = eleven\n")
    result = pytester.runpytest(*OFF, one)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: rng_seed in the configuration must be an integer*eleven*"])


RANDOMLY = """
import pytest

def test_plain(record):
    record()

@pytest.mark.rng_seed(3)
def test_marked(record):
    record()

@pytest.mark.rng_untouched
def test_untouched():
    pass
"""


@pytest.mark.slow
def test_with_pytest_randomly_and_xdist(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_randomly=RANDOMLY)
    result = pytester.runpytest_subprocess(
        "-p", "randomly", "--randomly-seed=5", "-p", "no:cacheprovider", "-n", "2", "--rng-report"
    )
    result.assert_outcomes(passed=3)
    found = records(pytester)
    # pytest-randomly seeds Python and NumPy before the call; rng_fork's random_seeder seeds torch.
    plain = "test_randomly.py::test_plain"
    call_seed = 5 + zlib.crc32(plain.encode())
    assert found[key(plain)] == draws(call_seed % 2**32, python_seed=call_seed)
    # A test's own seed wins over pytest-randomly's reseeds.
    assert found[key("test_randomly.py::test_marked")] == draws(3)
    result.stdout.fnmatch_lines([
        "2 of 3 test(s) drew from the global generators:",
        "leaks not checked: pytest-randomly reseeds every generator before each test*",
    ])
    assert "test_randomly.py::test_untouched\n" not in result.stdout.str()


def test_random_seeder_seeds_torch_and_leaves_python_and_numpy_to_pytest_randomly() -> None:
    python, numpy = random.getstate(), np.random.get_state()
    randomly_reseed(2**32 + 9)
    assert random.getstate() == python
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy))
    after_seeder = torch.rand(3)
    torch.manual_seed(9)
    assert torch.equal(after_seeder, torch.rand(3))


def test_format_findings() -> None:
    found = {"drew": [{"source": "torch", "count": 2, "where": "t.py:3 in test_a", "op": "rand"}],
             "leaked": ["torch"], "trace_failure": None}
    lines = format_findings([("t.py::test_a", found), ("t.py::test_b", {**found, "drew": [], "leaked": []})],
                            leaks_checked=True, isolated=False)
    assert lines == [
        "1 of 2 test(s) drew from the global generators:",
        "  t.py::test_a",
        "    torch: 2 draws, first at t.py:3 in test_a (rand)",
        "1 test(s) left the global generators changed for the tests after them:",
        "  t.py::test_a: torch",
    ]
    assert FINDINGS_ATTRIBUTE == "rng_fork_findings"


def test_a_test_that_a_marker_seeds_is_no_leak(pytester: pytest.Pytester) -> None:
    # rng_seed runs the test in a fork of its own: what it draws never reaches the next test.
    pytester.makepyfile(test_seeded=(
        "import pytest\nimport torch\n\n@pytest.mark.rng_seed(0)\ndef test_seeded():\n    torch.rand(1)\n\n"
        "def test_after():\n    pass\n"
    ))
    result = pytester.runpytest(*OFF, "--rng-report")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["1 of 2 test(s) drew from the global generators:",
                                 "  test_seeded.py::test_seeded",
                                 "0 test(s) left the global generators changed for the tests after them"])


def test_what_a_seeded_fork_or_stream_seeds_is_not_the_tests_draw(pytester: pytest.Pytester) -> None:
    # rng_fork seeds every source as the block opens (NumPy's unseen by 3.11's hooks): no draw of the test's.
    pytester.makepyfile(test_streams=(
        "import torch\nimport rng_fork\n\ndef test_stream(rng_stream):\n    with rng_stream:\n        torch.rand(1)\n"
        "    with rng_fork.fork_rng(seed=0):\n        torch.rand(1)\n"
    ))
    result = pytester.runpytest(*OFF, "--rng-report")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["1 of 1 test(s) drew from the global generators:", "  test_streams.py::test_stream",
                                 "    torch: 2 draws, first at test_streams.py:6 in test_stream (rand)"])
    assert "numpy" not in result.stdout.str() and "python:" not in result.stdout.str()


def test_a_drawing_test_counted_per_source(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_many="import torch\n\ndef test_many():\n    for _ in range(3):\n        torch.rand(1)\n")
    result = pytester.runpytest(*OFF, "--rng-report")
    result.stdout.fnmatch_lines(["    torch: 3 draws, first at test_many.py:5 in test_many (rand)",
                                 "1 test(s) left the global generators changed for the tests after them:",
                                 "  test_many.py::test_many: torch"])
