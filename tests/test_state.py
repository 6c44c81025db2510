"""RngState snapshots, state_dict checkpoints and set_rng_state validation."""

from __future__ import annotations

import copy
import io
import pickle
import random
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import rng_fork
from rng_fork import PlainCodec, RngState, RngStream, fork_rng, get_rng_state, set_rng_state

from .helpers import ValueSource, draw_all, refused_unchanged, registered, seed_globals

PLAIN_TYPES = (torch.Tensor, int, float, bool, str)


def _plain_only(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_only(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_only(v) for v in value)
    return isinstance(value, PLAIN_TYPES)


def test_names_and_repr() -> None:
    state = get_rng_state()
    assert state.names == ("python", "numpy", "torch")
    assert repr(state) == "RngState(python, numpy, torch)"


def test_restores_every_source() -> None:
    random.gauss(0, 1)
    np.random.randn()
    state = get_rng_state()
    expected = draw_all()
    draw_all()
    set_rng_state(state)
    assert draw_all() == expected


def test_equality_hash_and_immutability() -> None:
    a = get_rng_state()
    b = get_rng_state()
    assert a == b and hash(a) == hash(b)
    torch.rand(1)
    assert get_rng_state() != a
    assert a != "state"
    with pytest.raises(AttributeError):
        a.x = 1  # type: ignore[attr-defined]


def test_pickle_and_deepcopy() -> None:
    state = get_rng_state(generators=[np.random.default_rng(3), torch.Generator()])
    assert pickle.loads(pickle.dumps(state)) == state
    assert copy.deepcopy(state) == state


def test_state_dict_is_plain_and_round_trips() -> None:
    tg = torch.Generator().manual_seed(3)
    gens = [tg, np.random.default_rng(1), np.random.Generator(np.random.MT19937(2)), random.Random(5)]
    random.gauss(0, 1)
    state = get_rng_state(generators=gens)
    sd = state.state_dict()
    assert list(sd) == ["python", "numpy", "torch", "generator:0", "generator:1", "generator:2", "generator:3"]
    assert _plain_only(sd)
    assert sd["python"]["has_gauss"] is True
    assert RngState.from_state_dict(sd) == state


def test_torch_save_load_weights_only() -> None:
    loader_gen = torch.Generator().manual_seed(0)
    np.random.randn()
    state = get_rng_state(generators=[loader_gen, np.random.default_rng(7)])
    buffer = io.BytesIO()
    torch.save({"rng": state.state_dict()}, buffer)
    expected = draw_all(), torch.rand(2, generator=loader_gen).tolist()
    draw_all()
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["rng"]
    set_rng_state(loaded, generators=[loader_gen, np.random.default_rng()])
    assert (draw_all(), torch.rand(2, generator=loader_gen).tolist()) == expected


def test_generator_parts_need_the_generators() -> None:
    tg = torch.Generator()
    state = get_rng_state(generators=[tg])
    with pytest.raises(ValueError, match="generator:0"):
        set_rng_state(state)
    with pytest.raises(ValueError, match="generator:0.*a cpu generator|cannot go into"):
        set_rng_state(state, generators=[random.Random()])


def test_generator_type_mismatch_names_the_source() -> None:
    state = get_rng_state(generators=[np.random.default_rng(1)])
    with pytest.raises(ValueError, match="generator:0.*PCG64.*MT19937"):
        set_rng_state(state, generators=[np.random.Generator(np.random.MT19937(1))])


def _corruptions() -> list[tuple[str, Any, type[Exception], str]]:
    def sd() -> dict[str, Any]:
        return get_rng_state().state_dict()

    cases: list[tuple[str, Any, type[Exception], str]] = []
    d = sd()
    d["torch"]["state"] = d["torch"]["state"][:-1]
    cases.append(("short torch state", d, ValueError, "torch"))
    d = sd()
    d["torch"]["state"] = d["torch"]["state"].float()
    cases.append(("float torch state", d, TypeError, "torch"))
    d = sd()
    d["python"]["words"] = d["python"]["words"][:10]
    cases.append(("short python words", d, ValueError, "python"))
    d = sd()
    d["python"]["index"] = 625
    cases.append(("python index out of range", d, ValueError, "python"))
    d = sd()
    d["numpy"]["key"][3] = 2**32
    cases.append(("numpy word out of range", d, ValueError, "numpy"))
    d = sd()
    d["numpy"]["pos"] = -1
    cases.append(("numpy pos out of range", d, ValueError, "numpy"))
    d = sd()
    del d["numpy"]["gauss"]
    cases.append(("numpy entry missing", d, ValueError, "numpy"))
    d = sd()
    d["numpy"]["has_gauss"] = 1.0
    cases.append(("numpy has_gauss not a bool or int", d, TypeError, "numpy"))
    d = sd()
    d["numpy"]["has_gauss"] = 2**31
    cases.append(("numpy has_gauss beyond a C int", d, ValueError, "numpy"))
    d = sd()
    d["python"]["gauss"] = "0.5"
    d["python"]["has_gauss"] = True
    cases.append(("python gauss not a number", d, TypeError, "python"))
    d = sd()
    d["jax"] = {"type": "jax.Key", "value": 1}
    cases.append(("unknown type", d, ValueError, "jax"))
    d = sd()
    d["cuda:7"] = d["torch"]
    cases.append(("source that does not exist", d, ValueError, "cuda:7"))
    d = sd()
    del d["numpy"]
    cases.append(("missing source", d, ValueError, "numpy"))
    d = sd()
    d["torch"] = [1, 2]
    cases.append(("part not a dict", d, TypeError, "torch"))
    d = sd()
    d["torch"]["type"] = "random.Random"
    cases.append(("wrong type for the source", d, ValueError, "torch"))
    cases.append(("not a mapping", [1, 2], TypeError, "RngState"))
    return cases


@pytest.mark.parametrize(("what", "bad", "error", "name"), _corruptions(), ids=[c[0] for c in _corruptions()])
def test_corrupt_state_changes_nothing(what: str, bad: Any, error: type[Exception], name: str) -> None:
    draw_all()  # move away from a freshly seeded state
    with refused_unchanged(error, match=name):
        set_rng_state(bad)


def test_corrupt_torch_content_is_caught_before_anything_changes() -> None:
    sd = get_rng_state().state_dict()
    sd["torch"]["state"] = torch.full_like(sd["torch"]["state"], 255)
    before = get_rng_state()
    try:
        set_rng_state(sd)
    except (TypeError, ValueError, RuntimeError):
        assert get_rng_state() == before
    else:  # torch accepted the bytes: then they must have been restored exactly
        assert get_rng_state().state_dict()["torch"]["state"].equal(sd["torch"]["state"])


def test_a_cpu_state_torch_refuses_is_a_value_error_naming_the_source() -> None:
    sd = get_rng_state().state_dict()
    sd["torch"]["state"] = torch.zeros_like(sd["torch"]["state"])  # torch: "Invalid mt19937 state"
    with refused_unchanged(ValueError, match="RNG source 'torch': .*refuses"):
        set_rng_state(sd)


@pytest.mark.parametrize(
    ("entry", "value"),
    [("entropy", None), ("entropy", [[1]]), ("entropy", -1), ("n_children_spawned", True),
     ("n_children_spawned", 1.5), ("pool_size", -1), ("spawn_key", [-1]), ("spawn_key", 3)],
)
def test_a_malformed_seed_sequence_is_a_value_error_naming_the_source(entry: str, value: object) -> None:
    rng = np.random.default_rng(0)
    sd = get_rng_state(generators=[rng]).state_dict()
    sd["generator:0"]["state"]["rng_fork.seed_seq"][entry] = value
    with refused_unchanged(ValueError, match="'generator:0'.*rng_fork.seed_seq", generators=[rng]):
        set_rng_state(sd, generators=[rng])


class _OwnState(random.Random):
    def getstate(self) -> tuple[int, ...]:  # type: ignore[override]
        return (7, 8)

    def setstate(self, state: object) -> None:
        pass


def _spawned() -> np.random.Generator:
    rng = np.random.default_rng([3, 2**70])
    rng.spawn(2)
    return rng


@pytest.mark.parametrize(
    "make",
    [
        lambda: random.Random(3),
        lambda: _OwnState(),
        lambda: np.random.RandomState(5),
        lambda: np.random.default_rng(1),
        _spawned,
        lambda: torch.Generator().manual_seed(2),
    ],
)
def test_what_a_fork_saves_converts_to_what_a_snapshot_captures(make: Callable[[], object]) -> None:
    # A kept fork (an RngStream) is checkpointed from what its savers saved, without swapping states in.
    from rng_fork.sources import generator_sources, registered_sources

    for source in [*generator_sources([make()]), *registered_sources()[:3]]:
        save, _ = source.savers()
        assert source.part_of(save()) == source.capture(), source.name


class _LoadCounter(ValueSource):
    """A registered source that counts how often its state is put back."""

    def __init__(self) -> None:
        super().__init__("load_counter")
        self.loads = 0

    def load(self, part: Any) -> None:
        self.loads += 1


def test_a_numpy_global_swapped_to_another_mt19937_converts_too() -> None:
    from rng_fork.sources import registered_sources

    numpy_source = registered_sources()[1]
    save, _ = numpy_source.savers()  # bound to the bit generator of the moment
    original = np.random.get_bit_generator()
    np.random.set_bit_generator(np.random.MT19937(9))
    try:
        assert numpy_source.part_of(save()) == numpy_source.capture()
    finally:
        np.random.set_bit_generator(original)


def test_bit_generators_whose_seed_sequence_comes_and_goes() -> None:
    from rng_fork.sources import generator_sources

    # Legacy seeding leaves a bit generator without a SeedSequence; seeding a Generator gives it one.
    bg = np.random.MT19937(1)
    stream = RngStream(generators=[bg])
    with stream:
        bg.random_raw()
    np.random.RandomState(bg).seed(2)
    assert bg.seed_seq is None
    with stream:
        bg.random_raw()
    with fork_rng(seed=5, generators=[bg]):
        assert bg.seed_seq is not None
    assert bg.seed_seq is None
    (source,) = generator_sources([bg])
    save, _ = source.savers()
    assert source.part_of(save()) == source.capture()


def test_a_stream_checkpoint_touches_no_generator_and_refuses_a_non_mt19937_global() -> None:
    counter = _LoadCounter()
    with registered(counter):
        stream = RngStream(seed=1)
        with stream:
            torch.rand(2)
        loads = counter.loads
        sd = stream.state_dict()
        assert counter.loads == loads  # nothing was swapped in to be read
    del sd["state"]["load_counter"]
    restored = RngStream()
    restored.load_state_dict(sd)
    with stream:
        expected = draw_all()
    with restored:
        assert draw_all() == expected
    original = np.random.get_bit_generator()
    np.random.set_bit_generator(np.random.PCG64(0))
    try:
        pcg_stream = RngStream(seed=1)
        with pcg_stream:
            pass
        with pytest.raises(TypeError, match="numpy: .*PCG64.*MT19937"):
            pcg_stream.state_dict()
    finally:
        np.random.set_bit_generator(original)


def test_plain_states_must_hash_deeply() -> None:
    with pytest.raises(TypeError, match="must be hashable"):
        PlainCodec("x").check((1, [2]))


def test_strict_false_restores_what_is_there() -> None:
    expected = draw_all()
    seed_globals(1234)
    sd = get_rng_state().state_dict()
    del sd["numpy"]
    draw_all()
    set_rng_state(sd, strict=False)
    got = draw_all()
    assert got[0] == expected[0] and got[2] == expected[2] and got[1] != expected[1]


def test_constructor_validates_parts() -> None:
    from rng_fork.sources import TorchState

    with pytest.raises(ValueError, match=r"'torch'.*\d+ bytes, got 3"):
        RngState({"torch": ("torch.Generator", TorchState("cpu", torch.zeros(3, dtype=torch.uint8)))})
    with pytest.raises(TypeError, match="'torch'.*TorchState"):
        RngState({"torch": ("torch.Generator", ("cpu", b"123"))})
    with pytest.raises(ValueError, match="unknown state type"):
        RngState({"x": ("nope", 1)})


def test_set_rng_state_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="RngState"):
        set_rng_state(42)  # type: ignore[arg-type]


def test_seed_all_matches_manual_seeding_and_validates() -> None:
    rng_fork.seed_all(21)
    got = draw_all()
    seed_globals(21)
    assert got == draw_all()
    with pytest.raises(TypeError):
        rng_fork.seed_all(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rng_fork.seed_all(2**32)


def test_seed_all_seeds_the_others_and_names_a_source_that_fails() -> None:
    class Unseedable(ValueSource):
        def seed(self, seed: int) -> None:
            raise OSError("no entropy today")

    with registered(Unseedable("unseedable")):
        with pytest.raises(RuntimeError, match="but not unseedable: OSError: no entropy today"):
            rng_fork.seed_all(21)
    got = draw_all()
    seed_globals(21)
    assert got == draw_all()


def test_capture_never_initializes_cuda() -> None:
    get_rng_state()
    with rng_fork.fork_rng(seed=1):
        pass
    assert not torch.cuda.is_initialized()


def test_info_lists_the_sources() -> None:
    names = [entry["name"] for entry in rng_fork.info()]
    assert names[:4] == ["python", "numpy", "torch", "cuda"]
    cuda = next(entry for entry in rng_fork.info() if entry["name"] == "cuda")
    assert cuda["initialized"] == torch.cuda.is_initialized()


def test_info_reports_the_fast_path() -> None:
    import os

    by_name = {entry["name"]: entry for entry in rng_fork.info()}
    for name in ("python", "numpy"):
        status = by_name[name]["fast_path"]
        if os.environ.get("RNG_FORK_PORTABLE", "") not in ("", "0"):
            assert status.startswith("disabled")
        else:
            assert status.startswith(("active", "unavailable"))


# --- checkpoints from other machines ---------------------------------------------------

def _with_device_parts(sd: dict[str, Any], *names: str) -> dict[str, Any]:
    """``sd`` plus parts of CUDA devices (a checkpoint written on a GPU machine)."""
    cuda = {"type": "torch.Generator", "device": "cuda", "state": torch.zeros(16, dtype=torch.uint8)}
    return {**sd, **{name: dict(cuda) for name in names}}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA devices")
def test_parts_of_devices_this_process_lacks_are_skipped_and_reported_without_strict() -> None:
    target = get_rng_state()
    expected = draw_all()
    sd = _with_device_parts(target.state_dict(), "cuda:0", "cuda:1", "npu:0")
    torch.rand(5)
    with pytest.warns(rng_fork.RngForkWarning, match="skipped cuda:0, cuda:1, npu:0"):
        report = set_rng_state(sd, strict=False)
    assert draw_all() == expected
    assert report.restored == ("python", "numpy", "torch")
    assert report.skipped == ("cuda:0", "cuda:1", "npu:0")
    assert not report.complete
    with pytest.raises(ValueError, match="'cuda:0' does not exist.*strict=False"):
        set_rng_state(sd)


def test_a_complete_restore_reports_so_and_does_not_warn() -> None:
    state = get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = set_rng_state(state)
    assert report.complete and report.restored == state.names
    partial = set_rng_state(RngState._trusted({"torch": state._parts["torch"]}), strict=False)
    assert partial.missing == ("python", "numpy") and not partial.complete
    assert "no part for python, numpy" in str(partial)


def test_an_unknown_source_that_is_no_device_is_refused_even_without_strict() -> None:
    sd = get_rng_state().state_dict()
    sd["pyhton"] = sd.pop("python")
    with pytest.raises(ValueError, match="'pyhton' does not exist"):
        set_rng_state(sd, strict=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA devices")
def test_a_stream_checkpoint_from_a_gpu_machine_loads_and_reports_the_skipped_devices() -> None:
    saved = RngStream(seed=3)
    with saved:
        torch.rand(2)
    checkpoint = saved.state_dict()
    checkpoint["state"] = _with_device_parts(checkpoint["state"], "cuda:0")
    stream = RngStream(seed=3)
    with pytest.warns(rng_fork.RngForkWarning, match="skipped cuda:0"):
        report = stream.load_state_dict(checkpoint)
    assert report.skipped == ("cuda:0",)
    with saved:
        expected = torch.rand(3)
    with stream:
        assert torch.equal(torch.rand(3), expected)
