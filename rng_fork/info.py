"""``info()``: what rng_fork sees in this process."""

from __future__ import annotations

from typing import Any

from .sources import registered_families


def info() -> list[dict[str, Any]]:
    """One dict per registered source: its name, type, and whether it is live now.

    Device sources also report whether their runtime is initialized and how many
    devices they see (asked without initializing anything).

    Example::

        [s["name"] for s in rng_fork.info()]
        # ['python', 'numpy', 'torch', 'cuda', 'xpu', 'mtia', 'mps']
    """
    return [family.describe() for family in registered_families()]
