"""rng_fork: run code without changing what every other line of the program draws.

``with fork_rng(): evaluate()`` saves Python's, NumPy's, torch's and every
initialized accelerator device's RNG state, runs the block and puts them back
exactly, without ever initializing CUDA.
"""

from typing import Any

from .detect import assert_untouched, diff
from .errors import RngForkWarning, RngRestoreError, RngTouchedError
from .fork import fork_rng
from .info import info
from .isolate import RngStream, isolated
from .sources import (
    Codec,
    OneGenerator,
    PlainCodec,
    RngFamily,
    RngSource,
    register_source,
    registered_sources,
    unregister_source,
)
from .state import RestoreReport, RngState, get_rng_state, seed_all, set_rng_state
from .trace import RngEvent, RngSummaryRow, trace

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%%fork_rng`` cell magic; IPython calls this for ``%load_ext rng_fork``.

    IPython is imported only here, so ``import rng_fork`` works without it.

    Example::

        %load_ext rng_fork
    """
    from .ipython import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the ``%%fork_rng`` cell magic; IPython calls this for ``%unload_ext rng_fork``."""
    from .ipython import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "Codec",
    "OneGenerator",
    "PlainCodec",
    "RestoreReport",
    "RngEvent",
    "RngFamily",
    "RngForkWarning",
    "RngRestoreError",
    "RngSource",
    "RngState",
    "RngStream",
    "RngSummaryRow",
    "RngTouchedError",
    "assert_untouched",
    "diff",
    "fork_rng",
    "get_rng_state",
    "info",
    "isolated",
    "register_source",
    "registered_sources",
    "seed_all",
    "set_rng_state",
    "trace",
    "unregister_source",
]
