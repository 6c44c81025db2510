"""What the codecs share: reading checkpoint entries, and the Mersenne Twister layout.

Checkpoint data is plain (tensors, ints, floats, bools, strings, lists, dicts)
and may be anything a corrupt file holds, so every entry is checked for its
type and range here before a codec builds a part from it.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import torch

MT_WORDS = 624
"""Words in a Mersenne Twister state (Python's ``random`` and NumPy's MT19937)."""

MT_RAW_BYTES = MT_WORDS * 4 + 4
"""A raw Mersenne Twister state as parts keep it: the 624 uint32 words and one int32 position."""

C_INT = (-(2**31), 2**31 - 1)
"""The range of a C int, as NumPy keeps its flags."""

_F64 = struct.Struct("<d")

_INTEGER_DTYPES = frozenset(
    {torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64}
)


def need(plain: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """``plain[key]``, which must be there and of ``kind`` (a bool is no int unless asked for)."""
    if key not in plain:
        raise ValueError(f"missing entry {key!r}")
    value = plain[key]
    if isinstance(value, bool) and kind is not bool and not (isinstance(kind, tuple) and bool in kind):
        raise TypeError(f"entry {key!r} must not be a bool")
    if not isinstance(value, kind):
        raise TypeError(f"entry {key!r} has type {type(value).__name__}")
    return value


def dense(value: torch.Tensor, key: str) -> torch.Tensor:
    """A checkpoint's tensor as plain CPU memory; ``TypeError`` for one without such values
    (sparse, nested, on the meta device)."""
    if value.layout != torch.strided or value.is_nested or value.device.type == "meta":
        raise TypeError(f"entry {key!r} must be a dense tensor with data, not a {value.layout} one on {value.device}")
    return value.detach().resolve_conj().resolve_neg().cpu()


def words_from_plain(value: object, key: str) -> bytes:
    """Mersenne Twister words stored as an int64 tensor (or list) back to 2,496 bytes."""
    if isinstance(value, torch.Tensor):
        if value.dtype not in _INTEGER_DTYPES or value.dim() != 1:
            raise TypeError(f"entry {key!r} must be a 1-d integer tensor")
        if value.numel() != MT_WORDS:
            raise ValueError(f"entry {key!r} must hold {MT_WORDS} words, got {value.numel()}")
        values = dense(value, key).tolist()
    elif isinstance(value, (list, tuple)):
        values = list(value)
    else:
        raise TypeError(f"entry {key!r} must be a tensor of words, not {type(value).__name__}")
    if len(values) != MT_WORDS:
        raise ValueError(f"entry {key!r} must hold {MT_WORDS} words, got {len(values)}")
    if any(isinstance(w, bool) or not isinstance(w, int) or not 0 <= w < 2**32 for w in values):
        raise ValueError(f"entry {key!r} must hold unsigned 32-bit words")
    return struct.pack(f"<{MT_WORDS}I", *values)


def words_to_plain(words: bytes) -> torch.Tensor:
    """2,496 bytes of Mersenne Twister words as the int64 tensor a checkpoint holds."""
    return torch.tensor(struct.unpack(f"<{MT_WORDS}I", words), dtype=torch.int64)


def raw_position(raw: bytes, at: int) -> int:
    """The int32 at offset ``at`` of a raw state (the index or position)."""
    return int.from_bytes(raw[at : at + 4], "little", signed=True)


def float_bits(value: float) -> bytes:
    """A float as a part holds it: its 8 IEEE-754 bytes, so NaN equals itself and -0.0 differs from 0.0."""
    return _F64.pack(value)


def float_of(bits: bytes) -> float:
    """The float of :func:`float_bits`."""
    value: float = _F64.unpack(bits)[0]
    return value


def check_float_bits(value: object, what: str) -> None:
    """Raise ``TypeError`` unless ``value`` is a float's 8 bytes."""
    if not isinstance(value, bytes) or len(value) != _F64.size:
        raise TypeError(f"{what} must be a float's {_F64.size} bytes")


def plain_float(plain: Mapping[str, Any], key: str) -> float:
    """``plain[key]`` as a float (an int entry too)."""
    value = need(plain, key, (int, float))
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"entry {key!r} is too large for a float") from None
