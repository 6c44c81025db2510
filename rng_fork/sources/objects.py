"""Sources for generator objects: ``random.Random``, NumPy's ``RandomState`` and
``BitGenerator``, and ``torch.Generator``.

The global sources are these same adapters bound to the global objects
(``random._inst``, ``np.random.mtrand._rand``, ``torch.default_generator``), so
a user's own generator and the global one are saved by one piece of code.
"""

from __future__ import annotations

import contextlib
import copy
import random
import struct
from collections.abc import Hashable, Mapping
from typing import Any, Generic, TypeVar, cast

import numpy as np
import torch

from . import _fastpath
from . import bit_generator_states as bgs
from .base import Codec, Part, Plain, PlainCodec, RngSource, Savers
from .bit_generator_states import SEED_SEQ

_MT_WORDS = 624
_MT_BYTES = _MT_WORDS * 4

T = TypeVar("T")


def _need(plain: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in plain:
        raise ValueError(f"missing entry {key!r}")
    value = plain[key]
    if isinstance(value, bool) and kind is not bool and not (isinstance(kind, tuple) and bool in kind):
        raise TypeError(f"entry {key!r} must not be a bool")
    if not isinstance(value, kind):
        raise TypeError(f"entry {key!r} has type {type(value).__name__}")
    return value


_INTEGER_DTYPES = frozenset(
    {torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64}
)


def _dense(value: torch.Tensor, key: str) -> torch.Tensor:
    """A checkpoint's tensor as plain CPU memory; ``TypeError`` for one without such values
    (sparse, nested, on the meta device)."""
    if value.layout != torch.strided or value.is_nested or value.device.type == "meta":
        raise TypeError(f"entry {key!r} must be a dense tensor with data, not a {value.layout} one on {value.device}")
    return value.detach().resolve_conj().resolve_neg().cpu()


def _words_from_plain(value: object, key: str) -> bytes:
    """MT19937 words stored as an int64 tensor (or list) back to 2,496 bytes."""
    if isinstance(value, torch.Tensor):
        if value.dtype not in _INTEGER_DTYPES or value.dim() != 1:
            raise TypeError(f"entry {key!r} must be a 1-d integer tensor")
        if value.numel() != _MT_WORDS:
            raise ValueError(f"entry {key!r} must hold {_MT_WORDS} words, got {value.numel()}")
        values = _dense(value, key).tolist()
    elif isinstance(value, (list, tuple)):
        values = list(value)
    else:
        raise TypeError(f"entry {key!r} must be a tensor of words, not {type(value).__name__}")
    if len(values) != _MT_WORDS:
        raise ValueError(f"entry {key!r} must hold {_MT_WORDS} words, got {len(values)}")
    if any(isinstance(w, bool) or not isinstance(w, int) or not 0 <= w < 2**32 for w in values):
        raise ValueError(f"entry {key!r} must hold unsigned 32-bit words")
    return struct.pack(f"<{_MT_WORDS}I", *values)


def _words_to_plain(words: bytes) -> torch.Tensor:
    return torch.tensor(struct.unpack(f"<{_MT_WORDS}I", words), dtype=torch.int64)


_F64 = struct.Struct("<d")
_C_INT = (-(2**31), 2**31 - 1)


def _float_bits(value: float) -> bytes:
    """A float as a part holds it: its 8 IEEE-754 bytes, so NaN equals itself and -0.0 differs from 0.0."""
    return _F64.pack(value)


def _float_of(bits: bytes) -> float:
    value: float = _F64.unpack(bits)[0]
    return value


def _check_float_bits(value: object, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != _F64.size:
        raise TypeError(f"{what} must be a float's {_F64.size} bytes")


def _plain_float(plain: Mapping[str, Any], key: str) -> float:
    value = _need(plain, key, (int, float))
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"entry {key!r} is too large for a float") from None


# --- Python's random.Random ---------------------------------------------------

PythonPart = tuple[bytes, Any]
"""``(raw, gauss_next)``: raw is the int32 index then the 624 uint32 words, little-endian; gauss_next
is None, an int or a float's 8 bytes (``random.gauss`` returns ``mu + gauss_next * sigma``, of either type)."""

_RAW_BYTES = _MT_BYTES + 4


def _raw_position(raw: bytes, at: int) -> int:
    return int.from_bytes(raw[at : at + 4], "little", signed=True)


def _python_part(captured: _fastpath.PyCapture, name: str) -> PythonPart:
    """The part for a state in the fast path's form, whose gauss_next is the object itself."""
    raw, gauss = captured
    if type(gauss) is float:
        return (raw, _float_bits(gauss))
    if gauss is None or isinstance(gauss, int):  # a bool draws as the int it equals
        return (raw, None if gauss is None else int(gauss))
    raise TypeError(f"{name}: gauss_next is a {type(gauss).__name__}; snapshots keep None, an int or a float")


def _python_captured(part: PythonPart) -> _fastpath.PyCapture:
    raw, gauss = part
    return (raw, _float_of(gauss) if isinstance(gauss, bytes) else gauss)


class PythonRandomCodec(Codec):
    """Parts of ``random.Random``: ``(raw, gauss_next)``."""

    tag = "random.Random"

    def check(self, part: object) -> Part:
        if not isinstance(part, tuple) or len(part) != 2:
            raise TypeError("a random.Random state must be a (raw, gauss_next) tuple")
        raw, gauss = part
        if not isinstance(raw, bytes) or len(raw) != _RAW_BYTES:
            raise ValueError(f"a random.Random state needs {_RAW_BYTES} raw bytes")
        if not 0 <= _raw_position(raw, 0) <= _MT_WORDS:
            raise ValueError(f"a random.Random index must be in [0, {_MT_WORDS}]")
        if not (gauss is None or type(gauss) is int):
            _check_float_bits(gauss, "a random.Random gauss_next that is not None or an int")
        return part

    def to_plain(self, part: Part) -> Plain:
        raw, gauss = _python_captured(cast(PythonPart, part))
        return {
            "words": _words_to_plain(raw[4:]),
            "index": _raw_position(raw, 0),
            "has_gauss": gauss is not None,
            "gauss": 0.0 if gauss is None else gauss,
        }

    def from_plain(self, plain: Mapping[str, Any]) -> Part:
        words = _words_from_plain(_need(plain, "words", object), "words")
        index = _need(plain, "index", int)
        if not 0 <= index <= _MT_WORDS:
            raise ValueError(f"a random.Random index must be in [0, {_MT_WORDS}]")
        has_gauss = _need(plain, "has_gauss", bool)
        gauss = _need(plain, "gauss", (int, float))  # an int stays one: random.gauss would return an int
        raw = index.to_bytes(4, "little", signed=True) + words
        return self.check(_python_part((raw, gauss if has_gauss else None), "gauss"))


class _ObjectSource(RngSource, Generic[T]):
    """A source bound to one generator object."""

    def __init__(self, name: str, obj: T) -> None:
        self.name = name
        self.obj = obj

    def identity(self) -> Hashable:
        return ("object", id(self.obj))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "object": type(self.obj).__qualname__}


class PythonRandomSource(_ObjectSource[random.Random]):
    """A ``random.Random`` instance (the global one is ``random._inst``).

    Example::

        rng = random.Random(0)
        with fork_rng(generators=[rng]):
            rng.random()
    """

    codec = PythonRandomCodec()

    def capture(self) -> Part:
        return _python_part(_fastpath.capture_python(self.obj), self.name)

    def restore(self, part: Part) -> None:
        _fastpath.restore_python(self.obj, _python_captured(cast(PythonPart, part)))

    def savers(self) -> _fastpath.PySavers:
        return _fastpath.python_savers(self.obj)

    def part_of(self, saved: Any) -> Part:
        return _python_part(_fastpath.python_part(saved), self.name)

    def seed(self, seed: int) -> None:
        self.obj.seed(seed)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "fast_path": _fastpath.fast_path_info()["python"]}


def _scratch_instance(obj: random.Random) -> random.Random:
    """A new instance of ``obj``'s class, built without its ``__init__``, holding copies of its attributes.

    An attribute that cannot be deep-copied (a lock, say) is shared: ``setstate`` is not
    expected to change such a thing.
    """
    cls = type(obj)
    try:
        scratch = cls.__new__(cls)
    except Exception as exc:  # noqa: BLE001 - any failure means: no scratch instance to try states on
        raise TypeError(f"cannot make a scratch {cls.__qualname__} to check a state on: {exc}") from None
    attributes = vars(scratch)
    for name, value in vars(obj).items():
        attributes[name] = value
        with contextlib.suppress(Exception):  # not copyable: shared, see above
            attributes[name] = copy.deepcopy(value)
    return scratch


class RandomSubclassSource(_ObjectSource[random.Random]):
    """A ``random.Random`` subclass with its own ``getstate``/``setstate``: a generator
    "of your own devising" (as the random module's docs put it), or one that keeps
    more than the Mersenne Twister. Saved and restored through those methods.

    Example::

        class Lcg(random.Random):
            def random(self): ...
            def getstate(self): return self.x
            def setstate(self, x): self.x = x

        with fork_rng(generators=[Lcg()]): ...
    """

    codec = PlainCodec("random.Random.getstate")

    def _kind(self) -> str:
        # The qualified name alone: a class defined in a script is __main__.X there and
        # module.X where the resumed run imports it.
        return type(self.obj).__qualname__

    def capture(self) -> Part:
        # Tagged with the class: each subclass's state has a shape of its own. The state
        # itself must be hashable, so that the snapshot cannot change after the fact.
        return (self._kind(), self.codec.check(self.obj.getstate()))

    def restore(self, part: Part) -> None:
        self.obj.setstate(cast(tuple[str, Any], part)[1])

    def check_target(self, part: Part) -> None:
        if not (isinstance(part, tuple) and len(part) == 2):
            raise ValueError("expected a (class, state) pair")
        if part[0] != self._kind():
            raise ValueError(f"a {part[0]} state cannot go into a {self._kind()}")
        # Only the class's own setstate knows its states: it tries this one on a scratch
        # instance first, so that one it refuses changes nothing.
        scratch = _scratch_instance(self.obj)
        try:
            scratch.setstate(part[1])
        except Exception as exc:  # noqa: BLE001 - whatever setstate raises, the state is not one it takes
            raise ValueError(f"{self._kind()}.setstate refuses this state: {type(exc).__name__}: {exc}") from None

    def savers(self) -> Savers:
        return self.obj.getstate, self.obj.setstate

    def part_of(self, saved: Any) -> Part:
        return (self._kind(), self.codec.check(saved))

    def seed(self, seed: int) -> None:
        self.obj.seed(seed)


# --- NumPy's legacy RandomState ----------------------------------------------

NumpyPart = tuple[bytes, int, bytes]
"""``(raw, has_gauss, gauss)``: raw is the 624 uint32 key words then the int32 position, little-endian;
has_gauss the C int NumPy keeps (nonzero: a Gaussian is cached, so 2 draws as 1 does), gauss the
cached double's 8 bytes."""


def _numpy_part(captured: _fastpath.NpCapture) -> NumpyPart:
    raw, has_gauss, gauss = captured
    return (raw, has_gauss, _float_bits(gauss))


def _numpy_captured(part: NumpyPart) -> _fastpath.NpCapture:
    raw, has_gauss, gauss = part
    return (raw, has_gauss, _float_of(gauss))


class RandomStateCodec(Codec):
    """Parts of ``numpy.random.RandomState``: ``(raw, has_gauss, gauss)``."""

    tag = "numpy.random.RandomState"

    def check(self, part: object) -> Part:
        if not isinstance(part, tuple) or len(part) != 3:
            raise TypeError("a RandomState state must be a (raw, has_gauss, gauss) tuple")
        raw, has_gauss, gauss = part
        if not isinstance(raw, bytes) or len(raw) != _RAW_BYTES:
            raise ValueError(f"a RandomState state needs {_RAW_BYTES} raw bytes")
        if not 0 <= _raw_position(raw, _MT_BYTES) <= _MT_WORDS:
            raise ValueError(f"a RandomState pos must be in [0, {_MT_WORDS}]")
        if type(has_gauss) is not int:
            raise TypeError(f"a RandomState has_gauss must be an int, not {type(has_gauss).__name__}")
        if not _C_INT[0] <= has_gauss <= _C_INT[1]:
            raise ValueError("a RandomState has_gauss must fit in a C int")
        _check_float_bits(gauss, "a RandomState cached gaussian")
        return part

    def to_plain(self, part: Part) -> Plain:
        raw, has_gauss, gauss = _numpy_captured(cast(NumpyPart, part))
        return {
            "key": _words_to_plain(raw[:_MT_BYTES]),
            "pos": _raw_position(raw, _MT_BYTES),
            # A bool, as NumPy's own states have it; another int NumPy keeps, as it is.
            "has_gauss": bool(has_gauss) if has_gauss in (0, 1) else has_gauss,
            "gauss": gauss,
        }

    def from_plain(self, plain: Mapping[str, Any]) -> Part:
        key = _words_from_plain(_need(plain, "key", object), "key")
        pos = _need(plain, "pos", int)
        if not 0 <= pos <= _MT_WORDS:
            raise ValueError(f"a RandomState pos must be in [0, {_MT_WORDS}]")
        has_gauss = int(_need(plain, "has_gauss", (bool, int)))
        gauss = _plain_float(plain, "gauss")
        return self.check((key + pos.to_bytes(4, "little", signed=True), has_gauss, _float_bits(gauss)))


class RandomStateSource(_ObjectSource[np.random.RandomState]):
    """A ``numpy.random.RandomState`` (the global one is ``np.random.mtrand._rand``).

    Its legacy Gaussian cache is part of the state: ``np.random.randn`` after an
    odd number of draws restores exactly.
    """

    codec = RandomStateCodec()

    def _on_mt19937(self) -> bool:
        return isinstance(self.obj._bit_generator, np.random.MT19937)

    def _refuse_other_bit_generators(self, bit_generator: object) -> None:
        # Snapshots hold MT19937 states; a fork (savers) takes any bit generator.
        if not isinstance(bit_generator, np.random.MT19937):
            raise TypeError(
                f"{self.name}: this RandomState draws from {type(bit_generator).__name__}; "
                "snapshots cover MT19937 only (fork_rng covers any bit generator)"
            )

    def capture(self) -> Part:
        self._refuse_other_bit_generators(self.obj._bit_generator)
        return _numpy_part(_fastpath.capture_numpy(self.obj))

    def part_of(self, saved: Any) -> Part:
        if len(saved) == 2:  # (bit generator, state): the form saved for any bit generator
            self._refuse_other_bit_generators(saved[0])
        return _numpy_part(_fastpath.numpy_part(saved))

    def restore(self, part: Part) -> None:
        _fastpath.restore_numpy(self.obj, _numpy_captured(cast(NumpyPart, part)))

    def savers(self) -> Savers:
        return _fastpath.numpy_savers(self.obj)

    def check_target(self, part: Part) -> None:
        if not self._on_mt19937():
            raise ValueError(
                f"an MT19937 state cannot go into a RandomState drawing from {type(self.obj._bit_generator).__name__}"
            )

    def seed(self, seed: int) -> None:
        bg = self.obj._bit_generator
        if isinstance(bg, np.random.MT19937):
            self.obj.seed(seed)
        else:  # RandomState.seed re-seeds MT19937 only; a fresh state of the same kind does the same
            self.obj.set_state({**type(bg)(seed).state, "has_gauss": 0, "gauss": 0.0})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "fast_path": _fastpath.fast_path_info()["numpy"]}


# --- NumPy BitGenerators (behind numpy.random.Generator) ---------------------


if np.lib.NumpyVersion(np.__version__) < "2.0.0":
    raise ImportError(
        f"rng_fork needs NumPy 2.0 or later, not {np.__version__}: older NumPy cannot put a bit generator's "
        "SeedSequence back, so Generator.spawn inside a fork would leak out of it"
    )


def _load_with_seed_seq(bit_generator: np.random.BitGenerator, state: Mapping[str, Any], seed_seq: object) -> None:
    # The only way NumPy offers to replace a bit generator's SeedSequence: its unpickling
    # (``__setstate__((state, seed_seq))``, NumPy 2.0 and later).
    cast(Any, bit_generator).__setstate__((state, seed_seq))


def _seed_seq_of(bit_generator: np.random.BitGenerator) -> dict[str, Any] | None:
    """The bit generator's SeedSequence as plain data (None if it has none)."""
    seed_seq = bit_generator.seed_seq
    return bgs.seed_seq_plain(seed_seq) if isinstance(seed_seq, np.random.SeedSequence) else None


def _split_seed_seq(part: Part) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """NumPy's state dict and the SeedSequence entry of a part (None if it has none)."""
    state = bgs.thaw(part)
    seed_seq = state.pop(SEED_SEQ, None) if isinstance(state, dict) else None
    return state, seed_seq


class BitGeneratorCodec(Codec):
    """Parts of a NumPy ``BitGenerator``: its ``state`` dict, frozen into tuples, plus its
    ``SeedSequence`` (whose child counter ``Generator.spawn`` moves), if it has one.

    Every field is checked against the shape of its class's state (see
    :mod:`~rng_fork.sources.bit_generator_states`) before NumPy sees it.
    """

    tag = "numpy.random.BitGenerator"

    def check(self, part: object) -> Part:
        return bgs.freeze(bgs.checked_state(bgs.thaw(part)))

    def to_plain(self, part: Part) -> Plain:
        return {"state": bgs.to_plain_tree(bgs.thaw(part))}

    def from_plain(self, plain: Mapping[str, Any]) -> Part:
        state = bgs.from_plain_tree(_need(plain, "state", Mapping))
        return bgs.freeze(bgs.checked_state(state))


class BitGeneratorSource(_ObjectSource[np.random.BitGenerator]):
    """A NumPy ``BitGenerator``; a ``numpy.random.Generator`` is saved through its own.

    Example::

        rng = np.random.default_rng(0)
        with fork_rng(generators=[rng]):
            rng.normal()
    """

    codec = BitGeneratorCodec()

    def capture(self) -> Part:
        return self.part_of(self._save())

    def restore(self, part: Part) -> None:
        state, seed_seq = _split_seed_seq(part)
        if _seed_seq_of(self.obj) == seed_seq:
            self.obj.state = state
        else:  # a part without one was taken from a bit generator without one (legacy seeding)
            _load_with_seed_seq(self.obj, state, None if seed_seq is None else bgs.seed_seq_from(seed_seq))

    def savers(self) -> Savers:
        return self._save, self._load

    def _save(self) -> Any:
        # The state and the SeedSequence object (None after legacy seeding) with its
        # count, not a plain copy: a fork rebuilds nothing unless a block spawned or reseeded.
        bit_generator = self.obj
        seed_seq = bit_generator.seed_seq
        spawned = seed_seq.n_children_spawned if isinstance(seed_seq, np.random.SeedSequence) else None
        return bit_generator.state, seed_seq, spawned

    def _load(self, saved: Any) -> None:
        bit_generator = self.obj
        state, seed_seq, spawned = saved
        current = bit_generator.seed_seq
        if current is seed_seq and (spawned is None or current.n_children_spawned == spawned):
            bit_generator.state = state
        else:
            kept = seed_seq if spawned is None else bgs.with_children(seed_seq, spawned)
            _load_with_seed_seq(bit_generator, state, kept)

    def part_of(self, saved: Any) -> Part:
        state, seed_seq, spawned = saved
        if spawned is None:  # no SeedSequence that NumPy could be given back
            return bgs.freeze(state)
        return bgs.freeze({**state, SEED_SEQ: bgs.seed_seq_plain(bgs.with_children(seed_seq, spawned))})

    def seed(self, seed: int) -> None:
        fresh = type(self.obj)(seed)
        _load_with_seed_seq(self.obj, fresh.state, fresh.seed_seq)  # later children follow the seed

    def check_target(self, part: Part) -> None:
        wanted = type(self.obj).__name__
        got = _split_seed_seq(part)[0].get("bit_generator")
        if got != wanted:
            raise ValueError(f"a {got} state cannot go into a {wanted}")


# --- torch.Generator ---------------------------------------------------------

class TorchState:
    """A torch generator's state: its device type and the tensor ``get_state`` returned.

    The tensor is never handed out, so it stays as captured; keeping it (rather
    than bytes) makes a fork's capture and restore as cheap as torch's own.
    Compares, hashes and pickles by value.
    """

    __slots__ = ("device_type", "tensor")

    def __init__(self, device_type: str, tensor: torch.Tensor) -> None:
        self.device_type = device_type
        self.tensor = tensor

    def data(self) -> bytes:
        """The raw state bytes."""
        return self.tensor.numpy().tobytes()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TorchState):
            return NotImplemented
        return self.device_type == other.device_type and bool(torch.equal(self.tensor, other.tensor))

    def __hash__(self) -> int:
        return hash((self.device_type, self.data()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_torch_state_from_bytes, (self.device_type, self.data()))

    def __repr__(self) -> str:
        return f"TorchState({self.device_type!r}, {self.tensor.numel()} bytes)"


def _torch_state_from_bytes(device_type: str, data: bytes) -> TorchState:
    return TorchState(device_type, torch.frombuffer(bytearray(data), dtype=torch.uint8))


_CUDA_STATE_SIZES = (16, 8)  # seed + Philox offset; torch also accepts the seed alone


def _cpu_state_size() -> int:
    return int(torch.Generator().get_state().numel())


class TorchGeneratorCodec(Codec):
    """Parts of a ``torch.Generator`` on any device: a :class:`TorchState`."""

    tag = "torch.Generator"

    def check(self, part: object) -> Part:
        if not isinstance(part, TorchState):
            raise TypeError(f"a torch.Generator state must be a TorchState, not {type(part).__name__}")
        device_type, tensor = part.device_type, part.tensor
        if not isinstance(device_type, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError("a TorchState holds a device type name and a tensor")
        if tensor.dtype != torch.uint8 or tensor.dim() != 1 or tensor.device.type != "cpu":
            raise TypeError("a torch.Generator state must be a 1-d uint8 CPU tensor")
        if tensor.layout != torch.strided or tensor.is_nested or tensor.is_neg() or tensor.is_conj():
            raise TypeError("a torch.Generator state must be a dense tensor, not a view or a sparse one")
        size = tensor.numel()
        if device_type == "cpu":
            expected = _cpu_state_size()
            if size != expected:
                raise ValueError(f"a CPU generator state must be {expected} bytes, got {size}")
            # torch checks the content too; a scratch generator finds out without harm.
            try:
                torch.Generator().set_state(tensor)
            except RuntimeError as exc:
                raise ValueError(f"torch refuses this CPU generator state: {exc}") from None
        elif device_type == "cuda":
            if size not in _CUDA_STATE_SIZES:
                raise ValueError(f"a CUDA generator state must be 16 bytes, got {size}")
            if size == 16 and int.from_bytes(part.data()[8:], "little", signed=True) % 4:
                raise ValueError("a CUDA generator's Philox offset must be a multiple of 4")
        elif not size:
            raise ValueError(f"a {device_type} generator state must not be empty")
        return part

    def to_plain(self, part: Part) -> Plain:
        state = cast(TorchState, part)
        return {"device": state.device_type, "state": state.tensor.clone()}

    def from_plain(self, plain: Mapping[str, Any]) -> Part:
        device_type = _need(plain, "device", str)
        state = _need(plain, "state", torch.Tensor)
        if state.dtype != torch.uint8 or state.dim() != 1:
            raise TypeError(f"entry 'state' must be a 1-d uint8 tensor, got {state.dtype} with {state.dim()} dims")
        return self.check(TorchState(device_type, _dense(state, "state").clone()))


GRAPH_CAPTURE_HELP = (
    "{name}: during CUDA graph capture torch can neither seed a device generator nor give it a state "
    "with another seed (a captured graph keeps the seed it was captured with), a snapshot there would "
    "hold the graph's offset instead of the generator's, and before torch 2.10 torch cannot read or set "
    "its state at all. Seed, take or load snapshots and enter RngStreams outside the captured region "
    "(around torch.cuda.graph), or pass devices=[] to leave the devices out inside it; fork_rng() "
    "without a seed works inside a capture on torch 2.10 and later."
)


class TorchGeneratorSource(_ObjectSource[torch.Generator]):
    """A ``torch.Generator``: the CPU default generator, a CUDA device's, or the user's.

    Since torch 2.10 a CUDA generator's state can be read and set while a graph
    is captured: the offset is then the graph's own, so a fork inside a capture
    isolates the captured draws as it does eager ones. A seed there is refused
    (torch ignores one equal to the current seed), as are snapshots, whose
    offset would be the graph's.
    """

    codec = TorchGeneratorCodec()

    def __init__(self, name: str, obj: torch.Generator) -> None:
        super().__init__(name, obj)
        self.device_type = obj.device.type
        # The backend module that says whether a graph is being captured.
        self.module: Any = None if self.device_type == "cpu" else getattr(torch, self.device_type, None)

    def _capturing(self) -> bool:
        module = self.module
        capturing = getattr(module, "is_current_stream_capturing", None)
        if capturing is None:
            return False
        try:
            # Asked only of an initialized runtime: the question itself may create a context.
            initialized = getattr(module, "is_initialized", None)
            return (initialized is None or bool(initialized())) and bool(capturing())
        except Exception:  # noqa: BLE001 - no answer means: not known to be capturing
            return False

    def check_settled(self) -> None:
        # A CPU generator is never part of a graph (and is checked at every stream entry).
        if self.module is not None and self._capturing():
            raise RuntimeError(GRAPH_CAPTURE_HELP.format(name=self.name))

    def capture(self) -> Part:
        self.check_settled()
        return TorchState(self.device_type, self.obj.get_state())

    def restore(self, part: Part) -> None:
        self.obj.set_state(cast(TorchState, part).tensor)

    def savers(self) -> Savers:
        # The generator's own methods: no Python frame, no wrapper object.
        return self.obj.get_state, self.obj.set_state

    def part_of(self, saved: Any) -> Part:
        return TorchState(self.device_type, saved)

    def seed(self, seed: int) -> None:
        self.obj.manual_seed(seed)

    def check_target(self, part: Part) -> None:
        got = cast(TorchState, part).device_type
        if got != self.device_type:
            raise ValueError(f"a {got} generator state cannot go into a {self.device_type} generator")
        self.check_settled()


# --- generators= --------------------------------------------------------------

GENERATOR_PREFIX = "generator"


def _generator_objects(obj: object) -> list[object]:
    """The generator objects behind one entry of ``generators=``."""
    if isinstance(obj, random.SystemRandom):
        raise TypeError("random.SystemRandom has no state to fork")
    if isinstance(obj, (random.Random, np.random.RandomState, np.random.BitGenerator, torch.Generator)):
        return [obj]
    if isinstance(obj, np.random.Generator):
        return [obj.bit_generator]
    if isinstance(obj, torch.utils.data.DataLoader):
        # A loader draws from its own generator (the worker base seed) and from
        # its sampler's (the shuffle order); usually they are the same object.
        # Its samplers may be any iterable (a list of indices): only generators count.
        found = [obj.generator, *_sampler_generators(obj.sampler), *_sampler_generators(obj.batch_sampler)]
        return [g for generator in found if generator is not None for g in _generator_objects(generator)]
    if isinstance(obj, torch.utils.data.Sampler):
        return [g for generator in _sampler_generators(obj) for g in _generator_objects(generator)]
    raise TypeError(_UNSUPPORTED.format(type(obj).__qualname__))


def _sampler_generators(sampler: object) -> list[object]:
    """The generators a sampler draws from: its own, or that of the sampler it batches.

    A custom sampler's generator of a kind not supported here is then an error,
    not silently skipped.
    """
    found = [getattr(sampler, "generator", None), getattr(getattr(sampler, "sampler", None), "generator", None)]
    return [generator for generator in found if generator is not None]


_UNSUPPORTED = (
    "generators= takes torch.Generator, numpy.random.Generator, numpy.random.RandomState, "
    "numpy.random.BitGenerator, random.Random, a torch.utils.data.DataLoader or Sampler, not {}"
)


_SINGLE = (
    torch.utils.data.DataLoader,
    torch.utils.data.Sampler,
    torch.Generator,
    np.random.Generator,
    np.random.RandomState,
    np.random.BitGenerator,
    random.Random,
)


def generator_objects(generators: object) -> list[object]:
    """The distinct generator objects behind ``generators=``, in order of first appearance.

    Raises ``TypeError`` for anything that is not a list (or other iterable) of
    supported objects; a lone loader or sampler is refused before it is iterated.
    """
    # Checked before iterating: a loader, a sampler or a dataset may draw from the very generators to protect.
    if isinstance(generators, _SINGLE):
        raise TypeError(
            f"generators= takes a list of objects, not one {type(generators).__qualname__}: "
            "pass generators=[...] around it"
        )
    if isinstance(generators, torch.utils.data.Dataset):
        raise TypeError(_UNSUPPORTED.format(type(generators).__qualname__))
    if isinstance(generators, (str, bytes)) or not hasattr(generators, "__iter__"):
        raise TypeError(f"generators= must be an iterable of generators, not {type(generators).__name__}")
    seen: dict[int, object] = {}
    for entry in generators:
        for obj in _generator_objects(entry):
            seen.setdefault(id(obj), obj)
    return list(seen.values())


def generator_sources(generators: object) -> tuple[RngSource, ...]:
    """Sources for the objects of ``generators=``, named ``generator:0``, ``generator:1``, ...

    Each distinct generator gets one source, in order of first appearance, so
    the same list always yields the same names.
    """
    return tuple(_source_for(f"{GENERATOR_PREFIX}:{i}", obj) for i, obj in enumerate(generator_objects(generators)))


def _source_for(name: str, obj: object) -> RngSource:
    if isinstance(obj, random.Random):
        kind = type(obj)
        if kind.getstate is not random.Random.getstate or kind.setstate is not random.Random.setstate:
            return RandomSubclassSource(name, obj)
        return PythonRandomSource(name, obj)
    if isinstance(obj, np.random.RandomState):
        if not isinstance(obj._bit_generator, np.random.MT19937):
            raise TypeError("only a RandomState on MT19937 can be forked")
        return RandomStateSource(name, obj)
    if isinstance(obj, np.random.BitGenerator):
        return BitGeneratorSource(name, obj)
    assert isinstance(obj, torch.Generator)
    return TorchGeneratorSource(name, obj)
