"""torch's generators: the CPU default generator and the user's ``torch.Generator`` objects.

Device generators are these same adapters with a check for CUDA graph capture
added (see :mod:`.devices`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, cast

import torch

from . import _torch_view
from .base import Codec, InlineSavers, Part, Plain, Savers
from .plain import dense, need
from .python import ObjectSource


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
        device_type = need(plain, "device", str)
        state = need(plain, "state", torch.Tensor)
        if state.dtype != torch.uint8 or state.dim() != 1:
            raise TypeError(f"entry 'state' must be a 1-d uint8 tensor, got {state.dtype} with {state.dim()} dims")
        return self.check(TorchState(device_type, dense(state, "state").clone()))


class TorchGeneratorSource(ObjectSource):
    """A ``torch.Generator``: the CPU default generator or the user's.

    Saved as its state tensor, or, for a CPU generator where the verified raw
    view is on (see :mod:`._torch_view`), as the raw bytes of its state, a
    copy without torch's serialization; snapshots hold the state tensor either way.

    Example::

        g = torch.Generator().manual_seed(0)
        with fork_rng(generators=[g]):
            torch.rand(2, generator=g)
    """

    codec = TorchGeneratorCodec()
    obj: torch.Generator

    def __init__(self, name: str, obj: torch.Generator) -> None:
        super().__init__(name, obj)
        self.device_type = obj.device.type
        self._view = self._raw_view()

    def _raw_view(self) -> _torch_view.RawView | None:
        return _torch_view.raw_view(self.obj)

    def save(self) -> Any:
        view = self._view
        return self.obj.get_state() if view is None else view.raw

    def load(self, saved: Any) -> None:
        view = self._view
        if view is None or type(saved) is not bytes:
            self.obj.set_state(saved)
        else:
            view.raw = saved

    def savers(self) -> Savers:
        view = self._view
        if view is not None:
            # Builtins bound to the view: a copy, no Python frame.
            return functools.partial(getattr, view, "raw"), functools.partial(setattr, view, "raw")
        # The generator's own methods: no Python frame, no wrapper object.
        return self.obj.get_state, self.obj.set_state

    def _inline_savers(self) -> InlineSavers | None:
        view = self._view
        return None if view is None else InlineSavers("{view}.raw", "{view}.raw = {value}", {"view": view})

    def part_of(self, saved: Any) -> Part:
        if type(saved) is bytes:
            return TorchState(self.device_type, _torch_view.to_official(saved))
        return TorchState(self.device_type, saved)

    def saved_of(self, part: Part) -> Any:
        tensor = cast(TorchState, part).tensor
        return tensor if self._view is None else _torch_view.from_official(tensor)

    def capture(self) -> Part:
        if self._view is None:
            return super().capture()
        # A snapshot holds torch's own form: taken so, not converted from raw bytes.
        return TorchState(self.device_type, self.obj.get_state())

    def restore(self, part: Part) -> None:
        if self._view is None:
            super().restore(part)
        else:
            self.obj.set_state(cast(TorchState, part).tensor)

    def seed(self, seed: int) -> None:
        self.obj.manual_seed(seed)

    def check_target(self, part: Part) -> None:
        check_device_type(cast(TorchState, part), self.device_type, self.name)

    def describe(self) -> dict[str, Any]:
        if self.device_type != "cpu":
            return super().describe()
        return {**super().describe(), "fast_path": _torch_view.torch_view_info()}


def check_device_type(part: TorchState, device_type: str, name: str) -> None:
    """Raise ``ValueError`` unless ``part`` is a state of a ``device_type`` generator."""
    if part.device_type != device_type:
        raise ValueError(f"a {part.device_type} generator state cannot go into {name}, a {device_type} generator")
