"""Detecting code that consumes randomness: ``assert_untouched`` and ``diff``."""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, TypeVar

from ._swap import ThreadStack, extra_sources
from .errors import RngTouchedError
from .sources import generator_objects
from .state import RngState, snapshot
from .trace import trace

F = TypeVar("F", bound=Callable[..., Any])


def diff(a: RngState, b: RngState) -> list[str]:
    """The names of the sources whose states differ between two snapshots.

    A source present in only one of them counts as differing (CUDA initialized
    in between, say).

    Example::

        before = get_rng_state()
        torch.rand(1)
        diff(before, get_rng_state())   # ['torch']
    """
    if not isinstance(a, RngState) or not isinstance(b, RngState):
        raise TypeError(f"diff compares two RngState objects, not {type(a).__name__} and {type(b).__name__}")
    names = list(dict.fromkeys(a.names + b.names))
    return [name for name in names if name not in a.names or name not in b.names or a.part(name) != b.part(name)]


class assert_untouched:  # noqa: N801 - used like a function, as contextlib's helpers are
    """Raise :class:`RngTouchedError` if the block consumed or changed any RNG source.

    For tests that promise "this logging code consumes no randomness". Works as
    a context manager and as a decorator (on functions and coroutine functions).
    The error names each source that changed: ``"python"``, ``"numpy"``,
    ``"torch"``, ``"cuda:0"``, ``"generator:0"``, ...; with ``explain=True`` the
    block runs under :func:`rng_fork.trace` and the message also lists, per
    changed source, the ``file:line`` and op of each consumption.

    Example::

        with assert_untouched(generators=[train_loader], explain=True):
            log_metrics(model)
    """

    def __init__(self, *, generators: Iterable[object] = (), explain: bool = False) -> None:
        # Resolved here, not at every entry: a loader is not iterated again (nor a one-shot
        # iterable exhausted). The objects themselves are what the tracer of explain=True watches.
        self._generators = generator_objects(generators)
        self._extra = extra_sources(self._generators)
        if explain is not True and explain is not False:
            raise TypeError(f"explain must be a bool, not {type(explain).__name__}")
        self._explain = explain
        self._open: ThreadStack[tuple[RngState, trace | None]] = ThreadStack()

    def __enter__(self) -> assert_untouched:
        self._open.push(self._begin())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        opened = self._open.pop_own()
        if opened is None:
            raise RuntimeError("assert_untouched exited in a thread that did not enter it")
        self._end(opened, exc_type, exc, traceback)

    def _begin(self) -> tuple[RngState, trace | None]:
        tracer = trace(generators=self._generators) if self._explain else None
        opened = snapshot(self._extra), tracer
        if tracer is not None:
            tracer.__enter__()
        return opened

    def _end(
        self,
        opened: tuple[RngState, trace | None],
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        before, tracer = opened
        if tracer is not None:
            tracer.__exit__(exc_type, exc, traceback)
        if exc is not None:
            return  # the block's own error matters more
        changed = diff(before, snapshot(self._extra))
        if changed:
            raise RngTouchedError(changed, explanation=None if tracer is None else _explanation(tracer, changed))

    def __call__(self, fn: F) -> F:
        """Use as a decorator: each call must leave every source untouched."""
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            # Their bodies run after the call returns, step by step, interleaved with the caller's draws.
            raise TypeError(
                f"assert_untouched cannot decorate the generator function {fn.__qualname__}: its body runs "
                "after the call; check the code that consumes it with 'with assert_untouched():'"
            )
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def checked_coroutine(*args: Any, **kwargs: Any) -> Any:
                return await self._checked(fn(*args, **kwargs))

            return checked_coroutine  # type: ignore[return-value]

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            with self:
                result = fn(*args, **kwargs)
            # A coroutine that a plain callable returns runs later: it is checked when awaited.
            if isinstance(result, types.CoroutineType):
                return self._checked(result)
            if isinstance(result, (types.GeneratorType, types.AsyncGeneratorType)):
                raise TypeError(
                    f"{fn.__qualname__} returned a generator, whose body runs after the call; "
                    "check the code that consumes it with 'with assert_untouched():'"
                )
            return result

        return checked  # type: ignore[return-value]

    async def _checked(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        # Its own snapshot, not the thread's stack: tasks on one event loop share the thread and
        # interleave, so the innermost entry of the thread may be another task's.
        opened = self._begin()
        try:
            result = await coroutine
        except BaseException as exc:
            self._end(opened, type(exc), exc, exc.__traceback__)
            raise
        self._end(opened, None, None, None)
        return result


def _explanation(tracer: trace, changed: list[str]) -> str:
    """Per changed source, where the block consumed it: ``file:line in function: op (kind) xN``."""
    lines = []
    for source in changed:
        rows = [row for row in tracer.summary() if row.source == source]
        lines.append(f"  {source}:")
        if not rows:
            lines.append("    (no event: it changed and changed back, or where no hook and no checkpoint saw it)")
        for row in rows:
            count = f" x{row.count}" if row.count > 1 else ""
            what = row.op or "changed where no hook saw the call"
            lines.append(f"    {row.filename}:{row.lineno} in {row.function}: {what} ({row.kind}){count}")
    return "\n".join(lines)
