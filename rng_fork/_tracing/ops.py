"""torch ops that draw, seen through a dispatch mode.

Every aten op that draws carries ``torch.Tag.nondeterministic_seeded`` (all
ops with a ``generator`` argument do, plus dropout, RNNs and attention with
dropout). Around each, the hub takes a checkpoint before and after: whatever
watched generator changed is named by the op, and an op that drew nothing
(``rand(0)``, dropout with ``p=0``, a private ``torch.Generator``) is no event.

``ignore_compile_internals()`` keeps torch.compile compiling while the mode is
on: the mode is off while Dynamo traces and on again for the compiled code,
so compiled functions run (and draw) as they do untraced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_SEEDED = torch.Tag.nondeterministic_seeded

OpRunner = Callable[[Any, str, tuple[Any, ...], dict[str, Any]], Any]


class DrawWatch(TorchDispatchMode):  # type: ignore[misc,no-untyped-call,unused-ignore]
    """Passes every op on unchanged; hands the ops that may draw to ``run_drawing``."""

    def __init__(self, run_drawing: OpRunner) -> None:
        super().__init__()  # type: ignore[no-untyped-call,unused-ignore]
        self._run_drawing = run_drawing
        self._names: dict[int, tuple[Any, str | None]] = {}  # id(op) -> (op, its name if it may draw)

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # rng_fork is on Dynamo's skip list already; torch's own wrapper would import
        # Dynamo at the first op (seconds) and cost every op two frame-evaluation switches.
        return False

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        # Called for every op while the trace is open: no Python-level call on the common path.
        key = id(func)
        names = self._names
        if key in names:
            name = names[key][1]
        else:
            name = func.__name__.split(".")[0] if _SEEDED in func.tags else None
            names[key] = (func, name)  # the op itself is kept: its id stays its own
        if name is None:
            return func._op(*args, **kwargs) if kwargs else func._op(*args)
        return self._run_drawing(func, name, args, kwargs or {})
