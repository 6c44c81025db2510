"""``info()``: what rng_fork sees in this process."""

from __future__ import annotations

from typing import Any

from . import _interrupts
from .sources import registered_families


def info() -> list[dict[str, Any]]:
    """One dict per registered source: its name, type, and whether it is live now; then one for
    the SIGINT shield, saying how rng_fork's handler goes in and out (``fast_path``).

    Device sources also report whether their runtime is initialized and how many
    devices they see (asked without initializing anything).

    Example::

        [s["name"] for s in rng_fork.info()]
        # ['python', 'numpy', 'torch', 'cuda', 'xpu', 'mtia', 'mps', 'sigint']
    """
    shield = {"name": "sigint", "type": "InterruptShield", "fast_path": _interrupts.slot_info()}
    return [*(family.describe() for family in registered_families()), shield]
