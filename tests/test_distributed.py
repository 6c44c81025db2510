"""rng_fork.distributed: one-process groups here, two spawned gloo ranks in the slow tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from filelock import FileLock

import rng_fork
import rng_fork.distributed as rd
from rng_fork import get_rng_state

from ._dist_workers import ISOLATIONS, draws, observations, run_ranks
from .helpers import assert_error, one_rank_group, refused_unchanged, through_torch_save

CALLS: dict[str, Callable[[], object]] = {
    "gather_rng_state": rd.gather_rng_state,
    "check_rng_in_sync": rd.check_rng_in_sync,
    "broadcast_rng_state": rd.broadcast_rng_state,
    "rng_state_dict": rd.rng_state_dict,
    "load_rng_state_dict": lambda: rd.load_rng_state_dict({}),
}


@pytest.fixture
def one_rank() -> Iterator[None]:
    with one_rank_group():
        yield


# --- without a process group, and in a one-process group -----------------------


@pytest.mark.slow  # a fresh interpreter, so it imports torch again
def test_importing_rng_fork_leaves_distributed_out() -> None:
    code = "import sys, rng_fork; assert 'rng_fork.distributed' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", CALLS)
def test_every_function_needs_an_initialized_group(name: str) -> None:
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="not initialized"):
        CALLS[name]()


@pytest.mark.parametrize("name", CALLS)
def test_every_function_needs_torch_distributed(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="not available"):
        CALLS[name]()


def test_one_rank_gather_and_sync(one_rank: None) -> None:
    g = torch.Generator().manual_seed(5)
    assert rd.gather_rng_state(generators=[g]) == [get_rng_state(generators=[g])]
    report = rd.check_rng_in_sync()
    assert report and report.in_sync and report.differing == {}
    assert str(report) == "RNG state is the same on all 1 rank(s)"


def test_one_rank_broadcast_is_a_no_op_and_checks_src(one_rank: None) -> None:
    state = get_rng_state()
    rd.broadcast_rng_state(src=0)
    assert get_rng_state() == state
    with pytest.raises(ValueError, match=r"src=1 is not a rank of the group.*\[0\]"):
        rd.broadcast_rng_state(src=1)


def test_one_rank_checkpoint_round_trip(one_rank: None) -> None:
    g = torch.Generator().manual_seed(5)
    sd = through_torch_save(rd.rng_state_dict(generators=[g]))
    assert {k: sd[k] for k in ("format", "version", "world_size")} == {
        "format": "rng_fork.distributed",
        "version": 1,
        "world_size": 1,
    }
    assert sorted(sd["ranks"][0]) == ["generator:0", "numpy", "python", "torch"]
    expected = draws(g)
    draws(g)
    report = rd.load_rng_state_dict(sd, generators=[g])
    assert draws(g) == expected
    assert report == rd.RngLoadReport(1, 1, restored=(0,), not_restored=(), dropped=())
    assert report.complete
    assert str(report) == "RNG state saved by 1 rank(s), loaded into 1: restored rank 0"


def test_one_rank_strict_false_allows_missing_sources(one_rank: None) -> None:
    g = torch.Generator().manual_seed(5)
    sd = rd.rng_state_dict()  # without g
    expected = draws()
    missing = r"rank 0: ValueError: the state has no part for RNG source\(s\) 'generator:0'"
    with pytest.raises(ValueError, match=missing):
        rd.load_rng_state_dict(sd, generators=[g])
    g_state = g.get_state()
    rd.load_rng_state_dict(sd, strict=False, generators=[g])
    assert draws() == expected
    assert torch.equal(g.get_state(), g_state)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA devices")
def test_one_rank_skips_and_reports_devices_it_lacks_without_strict(one_rank: None) -> None:
    sd = rd.rng_state_dict()
    cuda = {"type": "torch.Generator", "device": "cuda", "state": torch.zeros(16, dtype=torch.uint8)}
    sd["ranks"][0]["cuda:0"] = cuda
    expected = draws()
    with pytest.raises(ValueError, match="'cuda:0' does not exist in this process.*strict=False"):
        rd.load_rng_state_dict(sd)
    with pytest.warns(rng_fork.RngForkWarning, match="rank 0 skipped cuda:0 \\(no such device there\\)"):
        report = rd.load_rng_state_dict(sd, strict=False)
    assert draws() == expected
    assert report.skipped == {0: ("cuda:0",)}
    assert report.restored == (0,) and not report.complete


MALFORMED = ["not a dict", "one process's state_dict", "future version", "bool world size", "too few entries",
             "entry not a dict", "corrupt entry"]


def _malformed(good: dict[str, Any]) -> dict[str, tuple[object, str]]:
    """Each case of MALFORMED built from a good state dict, with the message it must raise."""
    corrupt_entry = {**good, "ranks": [{**good["ranks"][0], "torch": {"type": "torch.Generator", "device": "cpu"}}]}
    return {
        "not a dict": ([good], "TypeError: expected the dict rng_state_dict\\(\\) returns, not list"),
        "one process's state_dict": (get_rng_state().state_dict(), "one process's RngState.state_dict\\(\\)"),
        "future version": ({**good, "version": 2}, "unsupported rng_state_dict version 2"),
        "bool world size": ({**good, "world_size": True}, "'world_size' must be a positive int, got True"),
        "too few entries": ({**good, "world_size": 2}, "'ranks' must be a list of 2 per-rank state dicts"),
        "entry not a dict": ({**good, "ranks": ["x"]}, "rank 0: TypeError: an RNG state dict must be a mapping"),
        "corrupt entry": (corrupt_entry, "rank 0: ValueError: RNG source 'torch': missing entry 'state'"),
    }


@pytest.mark.parametrize("case", MALFORMED)
def test_one_rank_load_rejects_malformed_dicts_and_changes_nothing(one_rank: None, case: str) -> None:
    cases = _malformed(rd.rng_state_dict())
    assert list(cases) == MALFORMED
    bad, message = cases[case]
    torch.rand(1)
    with refused_unchanged(ValueError, match="load_rng_state_dict changed nothing on any rank: .*" + message):
        rd.load_rng_state_dict(bad)  # type: ignore[arg-type]


def test_report_strings() -> None:
    sync = rd.RngSyncReport(world_size=4, differing={"python": (1,), "torch": (2, 3)})
    assert not sync and not sync.in_sync
    assert str(sync) == (
        "RNG state differs from rank 0's (or the source is missing on one side): "
        "'python' on rank 1; 'torch' on ranks 2, 3"
    )
    grown = rd.RngLoadReport(3, 1, restored=(0,), not_restored=(1, 2), dropped=())
    assert not grown.complete
    assert str(grown) == (
        "RNG state saved by 1 rank(s), loaded into 3: restored rank 0; ranks 1, 2 had no saved state and kept their own"
    )


# --- two spawned ranks ---------------------------------------------------------


def _run_once(tmp_path_factory: pytest.TempPathFactory, scenario: str) -> tuple[list[dict[str, Any]], Path]:
    """``run_ranks(scenario, 2, ...)`` once per test run, not once per pytest-xdist worker.

    Both workers get tests that use the same ranks; spawning them on each would run
    four ranks on two cores at once. The first worker runs them under a file lock in the
    run's shared temporary folder, the other reads what they wrote.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        out = tmp_path_factory.mktemp(scenario)
        return run_ranks(scenario, 2, out), out
    shared = tmp_path_factory.getbasetemp().parent  # this run's, above every worker's own
    out = shared / scenario
    with FileLock(str(shared / f"{scenario}.lock")):
        if out.is_dir():
            return observations(scenario, 2, out), out
        ready = shared / f"{scenario}.partial"
        shutil.rmtree(ready, ignore_errors=True)  # a run that failed on the other worker
        ready.mkdir()
        runs = run_ranks(scenario, 2, ready)
        ready.rename(out)
        return runs, out


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _run_once(tmp_path_factory, "ddp")[0]


@pytest.fixture(scope="module")
def collective_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path]:
    return _run_once(tmp_path_factory, "collectives")


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("isolation", [name for name in ISOLATIONS if name != "none"])
def test_ddp_rank0_evaluation_inside_isolation_leaves_training_unchanged(
    ddp_runs: list[dict[str, Any]], isolation: str
) -> None:
    for rank, runs in enumerate(ddp_runs):
        assert _same_weights(runs[isolation]["weights"], runs["baseline"]["weights"]), f"rank {rank}"
        assert runs[isolation]["in_sync"] and runs[isolation]["differing"] == {}
    assert _same_weights(ddp_runs[0][isolation]["weights"], ddp_runs[1][isolation]["weights"])


@pytest.mark.slow
def test_ddp_rank0_evaluation_without_isolation_changes_training(ddp_runs: list[dict[str, Any]]) -> None:
    # The control: without the fork the same evaluation changes every rank's weights,
    # and check_rng_in_sync names the three generators it moved on rank 0.
    for rank, runs in enumerate(ddp_runs):
        assert runs["baseline"]["in_sync"]
        assert not _same_weights(runs["none"]["weights"], runs["baseline"]["weights"]), f"rank {rank}"
        assert runs["none"]["differing"] == {"python": (1,), "numpy": (1,), "torch": (1,)}
    assert _same_weights(ddp_runs[0]["none"]["weights"], ddp_runs[1]["none"]["weights"])


@pytest.mark.slow
def test_gather_check_and_broadcast(collective_runs: tuple[list[dict[str, Any]], Path]) -> None:
    r0, r1 = collective_runs[0]
    assert r0["own"] != r1["own"]
    for r in (r0, r1):
        assert r["gathered"] == [r0["own"], r1["own"]]
        assert r["after_gather"] == r["own"]
        assert r["sync_before"][:2] == (False, {"python": (1,), "numpy": (1,), "torch": (1,)})
        assert r["sync_before"][2].endswith("'python' on rank 1; 'numpy' on rank 1; 'torch' on rank 1")
        assert r["after_broadcast"] == r1["src_state"]  # generator:0 included
        assert r["sync_after"] == (True, {}, "RNG state is the same on all 2 rank(s)")
        assert_error(r["bad_src"], ValueError, "src=2", "not a rank of the group", "[0, 1]")
    assert r0["src_state"] != r1["src_state"]
    assert r0["draws_after_broadcast"] == r1["draws_after_broadcast"]


@pytest.mark.slow
def test_per_rank_checkpoint(collective_runs: tuple[list[dict[str, Any]], Path]) -> None:
    r0, r1 = collective_runs[0]
    assert r0["expected"] != r1["expected"]
    for r in (r0, r1):
        assert r["restored_draws"] == r["expected"]
        assert r["load_report"] == rd.RngLoadReport(2, 2, restored=(0, 1), not_restored=(), dropped=())


@pytest.mark.slow
def test_a_corrupt_entry_restores_no_rank(collective_runs: tuple[list[dict[str, Any]], Path]) -> None:
    for r in collective_runs[0]:
        assert r["corrupt_before"] != r["saved"]  # restoring would have shown
        assert_error(r["corrupt"], ValueError, "changed nothing on any rank", "rank 1", "'torch'")
        assert r["corrupt_unchanged"]


@pytest.mark.slow
def test_checkpoint_of_one_rank_loaded_into_two(collective_runs: tuple[list[dict[str, Any]], Path]) -> None:
    r0, r1 = collective_runs[0]
    assert r0["solo_world_size"] == 1
    assert_error(r1["not_member"], ValueError, "not a member of the group")
    report = rd.RngLoadReport(2, 1, restored=(0,), not_restored=(1,), dropped=())
    for r in (r0, r1):
        assert_error(
            r["grow_strict"], ValueError, "changed nothing on any rank", "saved by 1 rank(s)", "has 2", "strict=False"
        )
        assert r["grow_strict_unchanged"]
        assert r["grow_report"] == report
        assert r["grow_warnings"] == [str(report)]
    assert r0["after_grow"] == r0["solo_saved"] != r0["grow_before"]
    assert r1["after_grow"] == r1["grow_before"]


@pytest.mark.slow
def test_ranks_given_different_checkpoints_restore_nothing(
    collective_runs: tuple[list[dict[str, Any]], Path],
) -> None:
    for r in collective_runs[0]:
        assert_error(r["mixed"], ValueError, "changed nothing on any rank", "different world sizes", "[1, 2]")
        assert r["mixed_unchanged"]


@pytest.mark.slow
def test_broadcast_strict_about_sources_src_lacks(collective_runs: tuple[list[dict[str, Any]], Path]) -> None:
    r0, r1 = collective_runs[0]
    for r in (r0, r1):
        assert_error(r["extra_strict"], ValueError, "changed nothing on any rank", "rank 1", "'extra'", "strict=False")
        assert r["extra_strict_unchanged"]
    assert r0["extra_loose"] == r0["extra_before"]
    assert r1["extra_loose"] == {**r0["extra_before"], "extra": 7}
    assert r1["extra_before"]["torch"] != r0["extra_before"]["torch"]


@pytest.mark.slow
def test_a_failed_restore_is_raised_on_every_rank(collective_runs: tuple[list[dict[str, Any]], Path]) -> None:
    r0, r1 = collective_runs[0]
    assert_error(r1["restore_failure"], rng_fork.RngRestoreError, "flaky", "flaky cannot be restored here")
    assert_error(r0["restore_failure"], rng_fork.RngRestoreError, "rank 1", "flaky", "flaky cannot be restored here")
    # Validation passed everywhere, so each rank restored what it could.
    assert r0["flaky_after"] == r0["flaky_saved"]
    assert r1["flaky_after"] == r1["flaky_saved"]


@pytest.mark.slow
def test_checkpoint_of_two_ranks_loaded_into_one(
    collective_runs: tuple[list[dict[str, Any]], Path], one_rank: None
) -> None:
    runs, out = collective_runs
    sd = torch.load(out / "rng.pt", weights_only=True)
    torch.rand(1)
    with refused_unchanged(ValueError, match=r"saved by 2 rank\(s\).* has 1.*strict=False"):
        rd.load_rng_state_dict(sd)
    report = rd.RngLoadReport(1, 2, restored=(0,), not_restored=(), dropped=(1,))
    with pytest.warns(UserWarning, match="restored rank 0; the saved state of rank 1 was not used"):
        assert rd.load_rng_state_dict(sd, strict=False) == report
    assert draws() == runs[0]["expected"]



@pytest.mark.slow
def test_devices_are_compared_and_broadcast_by_role(tmp_path: Path) -> None:
    # Each rank sees both devices and draws on its own (rank r on device r); comparing
    # or copying by index would pair rank 0's device 0 with rank 1's unused device 0.
    r0, r1 = run_ranks("one_device_per_rank", 2, tmp_path)
    for rank, r in enumerate((r0, r1)):
        assert r["current"] == {}
        assert r["current_initialized"] == {"fakedev": f"fakedev:{rank}"}
        assert r["in_step"] == {}
        assert r["apart"] == {"fakedev": (1,)}
        assert r["after_broadcast"] == {}
        assert r["other_kept"]
    assert r0["own_draws"] == r1["own_draws"]


@pytest.mark.cuda
@pytest.mark.slow
def test_ddp_on_cuda_rank0_evaluation_in_isolation_leaves_training_unchanged(tmp_path: Path) -> None:
    runs = run_ranks("ddp_cuda", 2, tmp_path)
    for rank, by_isolation in enumerate(runs):
        baseline = by_isolation["baseline"]["weights"]
        for isolation in ISOLATIONS:
            run = by_isolation[isolation]
            if isolation == "none":  # the control: dropout and noise on CUDA, the loader on the CPU
                assert not _same_weights(run["weights"], baseline), f"rank {rank}"
                assert run["differing"] == {"python": (1,), "numpy": (1,), "torch": (1,), "cuda": (1,)}
            else:
                assert _same_weights(run["weights"], baseline), f"rank {rank}, {isolation}"
                assert run["in_sync"], f"rank {rank}, {isolation}: {run['differing']}"


@pytest.mark.slow
def test_a_rank_that_cannot_read_its_state_fails_every_rank(
    collective_runs: tuple[list[dict[str, Any]], Path],
) -> None:
    for r in collective_runs[0]:
        kind, message = r["unreadable_broadcast"]
        assert kind == "ValueError"
        assert message.startswith("broadcast_rng_state changed nothing on any rank: rank 0: TypeError: ")
        assert "PCG64" in message
        kind, message = r["unreadable_gather"]
        assert kind == "ValueError" and message.startswith("gather_rng_state read no state on any rank: rank 0: ")
        kind, message = r["bad_generators"]
        assert kind == "ValueError"
        assert message.startswith("rng_state_dict read no state on any rank: rank 1: TypeError")
