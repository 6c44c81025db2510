"""Argument checks shared by every public entry point.

Each raises before any generator is touched, with a message that names the
argument and what was wrong with it.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import numpy as np
import torch

SEED_LIMIT = 2**32
"""Seeds must be below this: NumPy's legacy generator accepts nothing larger."""


def check_seed(seed: object, *, allow_none: bool = True) -> int | None:
    """Return ``seed`` if it is an int in ``[0, 2**32)`` (or None where allowed)."""
    if seed is None and allow_none:
        return None
    # Python's and NumPy's integers (seeds often come from arrays or configs), but not bools.
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int in [0, 2**32), not {type(seed).__name__}")
    value = int(seed)
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2**32), got {value}")
    return value


def short_repr(value: object) -> str:
    """``repr(value)`` for a message about bad input: short, and never failing (an int too long
    for ``repr``, a list nested too deeply) whatever the input."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an int of {value.bit_length()} bits"
    if value is None or isinstance(value, (int, float, str, bool)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return f"a {type(value).__name__}"


def check_devices(devices: Iterable[object] | None) -> tuple[int, ...] | None:
    """Normalise ``devices=`` to a tuple of device indices, or None for "every device".

    Accepts ints, ``torch.device`` objects and strings such as ``"cuda:1"``, as
    ``torch.random.fork_rng`` does.
    """
    if devices is None:
        return None
    # Plain non-negative ints, as a training loop passes them (often every step), checked without
    # a call per index; in increasing order they are distinct without a dict to drop repeats.
    if type(devices) is range:
        if devices.start >= 0 and devices.step > 0:
            return tuple(devices)  # distinct, in order
    elif type(devices) is tuple or type(devices) is list:
        last = -1
        increasing = True
        for index in devices:
            if type(index) is not int or index < 0:
                break
            if index <= last:
                increasing = False
            last = index
        else:
            return tuple(devices) if increasing else tuple(dict.fromkeys(devices))
    if isinstance(devices, (str, bytes, torch.device)) or not isinstance(devices, Iterable):
        raise TypeError(
            f"devices must be an iterable of device indices, not {type(devices).__name__}"
        )
    indices: list[int] = []
    for device in devices:
        indices.append(_device_index(device))
    return tuple(dict.fromkeys(indices))


def _device_index(device: object) -> int:
    if isinstance(device, (str, torch.device)):
        parsed = torch.device(device)
        if parsed.index is None:
            raise ValueError(f"device {str(device)!r} has no index; name it as 'cuda:N'")
        return parsed.index
    if isinstance(device, bool):
        raise TypeError("a device index must be an int, not bool")
    try:
        index = operator.index(device)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"a device index must be an int, not {type(device).__name__}") from None
    if index < 0:
        raise ValueError(f"device indices must be >= 0, got {index}")
    return index
