"""fork_rng on real CUDA devices. Skipped where no GPU is present.

Scenarios that need CUDA uninitialized run in a fresh interpreter each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.torch_version import TorchVersion

import rng_fork
from rng_fork import fork_rng

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).resolve().parents[1]


def _fresh(code: str) -> object:
    """Run ``code`` in a new interpreter (CUDA uninitialized); it prints JSON last."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _devices() -> range:
    return range(torch.cuda.device_count())


def test_every_device_is_forked() -> None:
    torch.cuda.init()
    torch.manual_seed(0)
    expected = [torch.rand(4, device=f"cuda:{i}").tolist() for i in _devices()]
    torch.manual_seed(0)
    state = rng_fork.get_rng_state()
    assert [n for n in state.names if n.startswith("cuda:")] == [f"cuda:{i}" for i in _devices()]
    with fork_rng():
        for i in _devices():
            torch.randn(1001, device=f"cuda:{i}")
            torch.cuda.manual_seed(5)
    assert [torch.rand(4, device=f"cuda:{i}").tolist() for i in _devices()] == expected


def test_seeded_block_on_cuda() -> None:
    torch.cuda.init()
    with fork_rng(seed=3):
        a = torch.rand(8, device="cuda").tolist()
    with fork_rng(seed=3):
        b = torch.rand(8, device="cuda").tolist()
    torch.manual_seed(3)
    assert a == b == torch.rand(8, device="cuda").tolist()


def test_devices_subset_and_empty() -> None:
    torch.cuda.init()
    before = torch.cuda.get_rng_state(0)
    with fork_rng(devices=[]):
        torch.rand(3, device="cuda:0")
    assert not torch.equal(torch.cuda.get_rng_state(0), before)
    before = torch.cuda.get_rng_state(0)
    with fork_rng(devices=[0]):
        torch.rand(3, device="cuda:0")
    assert torch.equal(torch.cuda.get_rng_state(0), before)


def test_missing_cuda_device_raises() -> None:
    with pytest.raises(ValueError, match=f"no device {torch.cuda.device_count()}"):
        with fork_rng(devices=[torch.cuda.device_count()]):
            pass


def test_checkpoint_round_trip_with_cuda() -> None:
    torch.cuda.init()
    torch.rand(5, device="cuda")
    sd = rng_fork.get_rng_state().state_dict()
    assert sd["cuda:0"]["device"] == "cuda" and sd["cuda:0"]["state"].numel() == 16
    expected = torch.rand(5, device="cuda").tolist()
    rng_fork.set_rng_state(sd)
    assert torch.rand(5, device="cuda").tolist() == expected


def test_fork_never_initializes_cuda() -> None:
    result = _fresh(
        """
        import json, torch, rng_fork
        with rng_fork.fork_rng(seed=1):
            torch.rand(3)
        rng_fork.get_rng_state()
        print(json.dumps(torch.cuda.is_initialized()))
        """
    )
    assert result is False


def test_block_that_initializes_cuda_with_a_seed_queued_before() -> None:
    with_block = _fresh(
        """
        import json, torch, rng_fork
        torch.manual_seed(7)            # queued for CUDA: not initialized yet
        with rng_fork.fork_rng():
            torch.randn(1000, device="cuda")
            torch.manual_seed(99)
        print(json.dumps(torch.randn(5, device="cuda").tolist()))
        """
    )
    without = _fresh(
        """
        import json, torch
        torch.manual_seed(7)
        print(json.dumps(torch.randn(5, device="cuda").tolist()))
        """
    )
    assert with_block == without


def test_block_that_initializes_cuda_without_a_seed_leaves_a_fresh_generator() -> None:
    result = _fresh(
        """
        import json, torch, rng_fork
        with rng_fork.fork_rng():
            torch.randn(1000, device="cuda")
        state = torch.cuda.get_rng_state()
        offset = int.from_bytes(bytes(state[8:].tolist()), "little")
        print(json.dumps([offset, torch.cuda.initial_seed()]))
        """
    )
    offset, _ = result  # type: ignore[misc]
    assert offset == 0, "the block's draws still show in the Philox offset"


def test_manual_seed_inside_a_block_does_not_leak_into_a_later_init() -> None:
    result = _fresh(
        """
        import json, torch, rng_fork
        torch.manual_seed(7)
        with rng_fork.fork_rng():
            torch.manual_seed(123)      # queued: must not reach CUDA's init
        print(json.dumps([torch.cuda.initial_seed(), torch.randn(3, device="cuda").tolist()]))
        """
    )
    seed, draws = result  # type: ignore[misc]
    assert seed == 7
    torch.cuda.manual_seed(7)
    assert draws == torch.randn(3, device="cuda").tolist()


def test_seeded_block_that_initializes_cuda() -> None:
    result = _fresh(
        """
        import json, torch, rng_fork
        with rng_fork.fork_rng(seed=5):
            inside = torch.rand(3, device="cuda").tolist()
        print(json.dumps([inside, torch.cuda.initial_seed() != 5]))
        """
    )
    inside, not_five = result  # type: ignore[misc]
    torch.cuda.manual_seed(5)
    assert inside == torch.rand(3, device="cuda").tolist()
    assert not_five


def test_forked_dataloader_worker_with_uninitialized_parent() -> None:
    result = _fresh(
        """
        import json, torch, rng_fork
        from torch.utils.data import DataLoader, Dataset

        class Items(Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, i):
                with rng_fork.fork_rng(seed=i):
                    x = torch.rand(1).item()
                return torch.tensor([x, float(torch.cuda.is_initialized())])

        loader = DataLoader(Items(), batch_size=4, num_workers=2, multiprocessing_context="fork")
        (batch,) = list(loader)
        print(json.dumps([batch[:, 1].sum().item(), torch.cuda.is_initialized()]))
        """
    )
    assert result == [0.0, False]


def test_detector_names_cuda_devices() -> None:
    torch.cuda.init()
    with pytest.raises(rng_fork.RngTouchedError, match="cuda:0"):
        with rng_fork.assert_untouched():
            torch.rand(1, device="cuda")


def test_isolated_and_stream_on_cuda() -> None:
    torch.cuda.init()
    stream = rng_fork.RngStream(seed=2)

    @rng_fork.isolated(seed=1)
    def sample() -> list[float]:
        return torch.rand(3, device="cuda").tolist()

    before = torch.cuda.get_rng_state()
    first = sample()
    with stream:
        a = torch.rand(2, device="cuda").tolist()
    with stream:
        b = torch.rand(2, device="cuda").tolist()
    assert torch.equal(torch.cuda.get_rng_state(), before)
    assert first == sample()
    torch.cuda.manual_seed(2)
    # Philox advances per kernel launch, so compare launch for launch.
    assert a == torch.rand(2, device="cuda").tolist()
    assert b == torch.rand(2, device="cuda").tolist()


GRAPH_SAFE_STATES = TorchVersion(torch.__version__) >= (2, 10)
"""Since torch 2.10 a CUDA generator's state can be read and set during graph capture."""


def _warmed_up() -> torch.Tensor:
    static = torch.zeros(16, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside capture, as torch's docs ask
        static.copy_(torch.rand(16, device="cuda"))
    torch.cuda.current_stream().wait_stream(stream)
    return static


def _captured(fork: bool) -> list[torch.Tensor]:
    """A graph drawing a, (a forked block), b; replayed from seed 1, then one eager draw after it."""
    torch.cuda.manual_seed(0)
    out = [torch.zeros(16, device="cuda") for _ in range(2)]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out[0].copy_(torch.rand(16, device="cuda"))
        if fork:
            with fork_rng():
                torch.randn(40, device="cuda")
                torch.rand(3)
        out[1].copy_(torch.rand(16, device="cuda"))
    torch.cuda.manual_seed(1)
    graph.replay()
    after = torch.rand(4, device="cuda")
    torch.cuda.synchronize()
    return [t.cpu() for t in (*out, after)]


@pytest.mark.skipif(not GRAPH_SAFE_STATES, reason="torch < 2.10 refuses generator states during capture")
def test_fork_inside_graph_capture_isolates_the_captured_draws() -> None:
    torch.cuda.init()
    _warmed_up()
    cpu_before = torch.get_rng_state()
    plain, forked = _captured(fork=False), _captured(fork=True)
    assert torch.equal(torch.get_rng_state(), cpu_before)
    for a, b in zip(plain, forked, strict=True):
        assert torch.equal(a, b)


def test_fork_during_graph_capture() -> None:
    """Inside torch.cuda.graph: a clear error where torch refuses (a seed; any state before
    torch 2.10), CPU-only forks work, and a fork around the capture restores the generator."""
    torch.cuda.init()
    static = _warmed_up()
    graph = torch.cuda.CUDAGraph()
    cpu_before = torch.get_rng_state()
    user_generator = torch.Generator(device="cuda").manual_seed(3)
    with torch.cuda.graph(graph):
        with pytest.raises(RuntimeError, match="outside the captured region"):
            with fork_rng(seed=5):
                pass
        with pytest.raises(RuntimeError, match="generator:0: during CUDA graph capture"):
            with fork_rng(seed=3, devices=[], generators=[user_generator]):  # its own seed: torch would ignore it
                pass
        with pytest.raises(RuntimeError, match="outside the captured region"):
            with rng_fork.RngStream():
                pass
        if not GRAPH_SAFE_STATES:
            with pytest.raises(RuntimeError, match="outside the captured region"):
                with fork_rng():
                    pass
        with fork_rng(devices=[]):
            torch.rand(3)  # CPU draws inside the capture region
        static.copy_(torch.rand(16, device="cuda"))
    assert torch.equal(torch.get_rng_state(), cpu_before)
    graph.replay()
    torch.cuda.synchronize()

    before = torch.cuda.get_rng_state()
    with fork_rng():
        graph2 = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph2):
            static.copy_(torch.rand(16, device="cuda"))
        graph2.replay()
    torch.cuda.synchronize()
    assert torch.equal(torch.cuda.get_rng_state(), before)
