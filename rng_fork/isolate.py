"""``@isolated`` and ``RngStream``: private randomness for functions, generators and coroutines.

Both are built on one swap: save the caller's states, put the private ones in,
run, save the private ones back and restore the caller's. A plain call swaps
once; a generator or a coroutine swaps around every step, so the caller's
streams never move, neither during nor between steps.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast, overload

from . import state
from ._checks import SEED_LIMIT, check_devices, check_seed
from ._interrupts import protected, release_held, shield, unshield
from ._swap import (
    Block,
    Prepare,
    Saved,
    SourceSet,
    enter,
    extra_sources,
    homes_above,
    leave_opened,
    live_sources,
    open_layer,
    restore_all,
    take,
)
from .sources import RngSource, is_device_part, objects_of

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class _Steppable(Protocol):
    def send(self, value: Any, /) -> Any: ...
    def throw(self, exc: BaseException, /) -> Any: ...
    def close(self) -> Any: ...


class RngStream(Block):
    """A persistent private random stream, entered with ``with`` or used as a decorator.

    On each entry the stream's own state is swapped in; on exit it is saved back
    and the caller's state restored. The first entry starts from ``seed`` or,
    without one, from the caller's state at that moment. So an evaluation that
    runs every epoch gets fresh but reproducible randomness each time, and
    training never notices. A stream is one stream however blocks nest: entered
    again inside itself (a recursive call), or inside a fork or another stream
    opened within it, it goes on from its last draw, and those draws never
    reach the code around the inner entry.

    Example::

        eval_rng = RngStream(seed=0)
        for epoch in range(3):
            train_one_epoch()
            with eval_rng:
                evaluate()              # new draws every epoch, same draws every run

        @eval_rng
        def log_samples(): ...

        checkpoint["eval_rng"] = eval_rng.state_dict()
    """

    # Slots: a stream has no ``enabled`` of its own to switch off (the attribute is read-only).
    __slots__ = ("__weakref__", "_extra", "_own", "devices", "seed")
    _frames_to_user = 2  # below __enter__
    _own: Saved | None
    """The stream's states while it is not open; None until it first runs."""

    def __init__(
        self,
        seed: int | None = None,
        *,
        devices: Iterable[object] | None = None,
        generators: Iterable[object] = (),
    ) -> None:
        self._setup(check_seed(seed), check_devices(devices), extra_sources(generators))

    @classmethod
    def _private(cls, seed: int | None, devices: tuple[int, ...] | None, extra: SourceSet) -> RngStream:
        """A stream from already checked arguments (one per isolated generator or coroutine)."""
        stream = cls.__new__(cls)
        stream._setup(seed, devices, extra)
        return stream

    def _setup(self, seed: int | None, devices: tuple[int, ...] | None, extra: SourceSet) -> None:
        self.seed = seed
        self.devices = devices
        self._extra = extra
        self._own = None

    @property
    def started(self) -> bool:
        """Whether the stream has been entered (or loaded) at least once."""
        return self._own is not None

    def _is_open(self) -> bool:
        return open_layer(self) is not None

    @protected
    def __enter__(self) -> RngStream:
        innermost = open_layer(self)
        if innermost is None:
            enter(self, self._put_in, seeded=self._own is None)
        else:
            # Open already (lower down): its states are where the blocks above it keep them.
            enter(self, _not_capturing_then(homes_above(innermost)), seeded=False, guard=False)
        return self

    @protected
    def _put_in(self, caller: Saved) -> None:
        # The stream's state outlives the block: none may be taken inside a graph capture.
        caller.sources.check_not_graph_capturing()
        own = self._own
        if own is not None:
            if own.sources is caller.sources:
                own.restore()
            else:
                self._put_in_what_is_covered(caller, own)

    def _put_in_what_is_covered(self, caller: Saved, own: Saved) -> None:
        # The sources changed since the stream last ran. Only those the block saved get the
        # stream's state (one unregistered meanwhile is no longer the stream's to change, and
        # would never be put back); a generator that appeared (a device initialized meanwhile)
        # starts from the stream's seed, as if it had been there all along.
        own.restore(only={source.name for source in caller.sources.sources})
        if self.seed is not None:
            known = {source.name for source in own.sources.sources}
            for source in caller.sources.sources:
                if source.name not in known:
                    source.seed(self.seed)

    @protected
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        layer = open_layer(self)
        if layer is None:
            release_held()
            raise RuntimeError("an RngStream was left more often than it was entered")
        if layer.homes is None:  # its first entry: the stream's states are kept for the next one
            try:
                own = take(self.devices, self._extra, guard=False)
            except BaseException:
                leave_opened(self, None, exc, None, layer)
                raise
            self._own = own
        # leave_opened with the layer named, not leave(layer, exc): a frame fewer on every stream exit.
        leave_opened(self, None, exc, None, layer)

    def __call__(self, fn: F) -> F:
        """Decorate ``fn`` so every call (every generator or coroutine step) draws from this stream."""
        return _wrap(fn, self, lambda: self)

    def state_dict(self) -> dict[str, Any]:
        """The stream's state as plain checkpoint data (see :meth:`RngState.state_dict`).

        A stream that has not started yet saves only its seed. The stream keeps
        its state in each source's fastest form and converts it here, without
        touching any generator. Inside the stream its state is in the generators,
        drawn from as the block runs: asked there, it raises ``RuntimeError``
        rather than give the state the block started from.
        """
        from .state import RngState

        if self._is_open():
            raise RuntimeError(
                "cannot save the state of an RngStream while it is active (its state is the one the block is "
                "drawing from): call state_dict() outside the stream"
            )
        parts = None if self._own is None else RngState._trusted(self._own.parts()).state_dict()
        return {"seed": -1 if self.seed is None else self.seed, "started": parts is not None, "state": parts or {}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> state.RestoreReport:
        """Continue from a :meth:`state_dict`; validates it fully before changing anything.

        The checkpoint's seed becomes the stream's (a stream that had not started
        starts from it). Parts for sources the stream does not cover (devices left
        out by ``devices=``) are ignored; parts of devices this process does not have
        are skipped and reported, with an :class:`~rng_fork.RngForkWarning`; a
        covered source the checkpoint lacks starts from the caller's state at the
        time of loading. Returns a :class:`~rng_fork.RestoreReport`.

        Example::

            eval_rng = RngStream(seed=0)
            eval_rng.load_state_dict(checkpoint["eval_rng"])
        """
        from .state import RestoreReport, RngState, absent_device, resolve_targets

        if not isinstance(state_dict, dict) or not {"seed", "started", "state"} <= set(state_dict):
            raise ValueError("an RngStream state dict needs 'seed', 'started' and 'state' entries")
        started = state_dict["started"]
        if not isinstance(started, bool):
            raise TypeError(f"an RngStream state dict's 'started' must be a bool, not {type(started).__name__}")
        seed = _saved_seed(state_dict["seed"])
        if self._is_open():
            raise RuntimeError("cannot load the state of an RngStream while it is active")
        if not started:
            if not isinstance(state_dict["state"], dict) or state_dict["state"]:
                raise ValueError("an RngStream state dict that has not started has an empty 'state'")
            self.seed, self._own = seed, None
            return RestoreReport(())
        snapshot = RngState.from_state_dict(state_dict["state"])
        # Parts of devices the stream does not cover (a checkpoint from a bigger
        # machine) are left out before validation, and never reach the caller's
        # generators. Every other part must fit, as set_rng_state demands.
        covered = {source.name for source in live_sources(self.devices, self._extra)}
        kept = [name for name in snapshot.names if name in covered or not is_device_part(name) or absent_device(name)]
        snapshot = snapshot._renamed({name: name for name in kept})
        targets = resolve_targets(snapshot, self._extra.sources, strict=False)
        self._own = _converted(targets.entries, self.devices, self._extra)
        self.seed = seed
        return targets.report(warn_from=2)

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its arguments and state_dict(): its sources hold views of its generators'
        # memory, so a copy made field by field would swap the original generators (and share
        # the saved states), not the copies of them.
        if self._is_open():
            raise RuntimeError("cannot copy or pickle an RngStream while it is active: do it outside the stream")
        return (_stream_from, (self.seed, self.devices, objects_of(self._extra.sources), self.state_dict()))

    def __repr__(self) -> str:
        return f"RngStream(seed={self.seed}, started={self.started})"


def _stream_from(
    seed: int | None, devices: tuple[int, ...] | None, generators: tuple[object, ...], state_dict: dict[str, Any]
) -> RngStream:
    """An ``RngStream`` from what :meth:`RngStream.__reduce__` keeps (pickle and copy call it)."""
    stream = RngStream(seed, devices=devices, generators=generators)
    stream.load_state_dict(state_dict)
    return stream


@overload
def isolated(fn: F, /) -> F: ...


@overload
def isolated(
    fn: None = None,
    /,
    *,
    seed: int | None = None,
    devices: Iterable[object] | None = None,
    generators: Iterable[object] = (),
) -> Callable[[F], F]: ...


def isolated(
    fn: Any = None,
    /,
    *,
    seed: int | None = None,
    devices: Iterable[object] | None = None,
    generators: Iterable[object] = (),
) -> Any:
    """Run every call of ``fn`` in its own fork of every RNG.

    Usable as ``@isolated``, ``@isolated()`` and ``@isolated(seed=..., devices=..., generators=...)``,
    with ``fork_rng``'s arguments and validation (bad arguments fail here).
    Plain functions, methods, ``staticmethod``/``classmethod`` (in either order
    of stacking) and other callables run each call in a fresh fork. Generator
    functions, coroutine functions and async generator functions stay what they
    are; each generator or coroutine runs on a private stream that starts from
    the caller's state at its first step (or from ``seed``) and is swapped in at
    every resumption and out at every suspension. So is a generator, coroutine
    or async generator that any other callable returns (an object with an
    ``async def __call__``, a plain decorator around an ``async def``). A
    function that returns a context manager is isolated only while it is called.

    Example::

        @isolated
        def evaluate(model, loader): ...

        @isolated(seed=0)
        async def sample(model): ...
    """
    checked_seed = check_seed(seed)
    checked_devices = check_devices(devices)
    extra = extra_sources(generators)

    def decorate(target: F) -> F:
        return isolate_checked(target, checked_seed, checked_devices, extra)

    return decorate if fn is None else decorate(fn)


def isolate_checked(fn: F, seed: int | None, devices: tuple[int, ...] | None, extra: SourceSet) -> F:
    """``isolated`` for arguments that were already checked (``fork_rng`` as a decorator)."""
    return _wrap(fn, _CallFork(devices, extra, seed), lambda: RngStream._private(seed, devices, extra))


def _not_capturing_then(prepare: Prepare) -> Prepare:
    return functools.partial(_check_not_capturing_then, prepare)


@protected
def _check_not_capturing_then(prepare: Prepare, layer: Saved) -> None:
    layer.sources.check_not_graph_capturing()
    prepare(layer)


def _saved_seed(seed: object) -> int | None:
    """The seed entry of a stream's state dict: -1 for none, else a seed."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"an RngStream state dict's 'seed' must be an int, not {type(seed).__name__}")
    if seed == -1:
        return None
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"an RngStream state dict's 'seed' must be -1 (none) or in [0, 2**32), got {seed}")
    return seed


@protected
def _converted(entries: list[tuple[RngSource, Any]], devices: tuple[int, ...] | None, extra: SourceSet) -> Saved:
    """What a stream keeps for the parts ``entries``: put in, taken the way the stream
    saves itself, and the caller's states put back, a SIGINT held meanwhile."""
    shielded = shield()
    try:
        caller = take(devices, extra, guard=False)
        try:
            restore_all(entries)
            return take(devices, extra, guard=False)
        finally:
            caller.restore()
    finally:
        unshield(shielded)
        release_held()


class _CallFork(Block):
    """The fork the calls of one ``@isolated`` function run in.

    Made once, with the function's wrapper, and entered by every call: like a
    ``fork_rng`` object, it can be open many times at once (recursion, threads),
    and each exit closes the innermost block it opened in its thread.
    """

    __slots__ = ("_extra", "devices", "seed")
    _frames_to_user = 2  # below the wrapper

    def __init__(self, devices: tuple[int, ...] | None, extra: SourceSet, seed: int | None) -> None:
        self.devices, self._extra, self.seed = devices, extra, seed

    __enter__ = enter
    __exit__ = leave_opened


Context = Any  # anything with __enter__/__exit__


def _wrap(fn: F, for_call: Context, for_steps: Callable[[], Context]) -> F:
    """Wrap any callable so each call runs in the context ``for_call`` (entered by every call:
    it must nest and may be open in several threads) or steps in ``for_steps()``."""
    return cast(F, _wrapper(fn, for_call, for_steps))


def _wrapper(fn: Any, for_call: Context, for_steps: Callable[[], Context]) -> Any:
    if isinstance(fn, (staticmethod, classmethod)):
        return type(fn)(_wrapper(fn.__func__, for_call, for_steps))
    if not callable(fn):
        raise TypeError(f"can only isolate a callable, not {type(fn).__name__}")

    if inspect.isasyncgenfunction(fn):
        return functools.wraps(fn)(_stepped_async_gen_function(fn, for_steps))

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def coroutine_wrapper(*args: Any, **kwargs: Any) -> Any:
            return await _Stepped(fn(*args, **kwargs), for_steps())

        return coroutine_wrapper

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            return (yield from _steps(fn(*args, **kwargs), for_steps()))

        return generator_wrapper

    @functools.wraps(fn)
    def call_wrapper(*args: Any, **kwargs: Any) -> Any:
        with for_call:
            result = fn(*args, **kwargs)
        # A callable that hands back a generator or coroutine without being a
        # generator or coroutine function (an async __call__, a plain decorator
        # around an async def): its body runs later, so it is stepped as one.
        stepped_later = _STEPPED_LATER.get(type(result))
        return result if stepped_later is None else stepped_later(result, for_steps)

    return call_wrapper


def _stepped_async_gen_function(
    start: Callable[..., AsyncGenerator[Any, Any]], for_steps: Callable[[], Context]
) -> Callable[..., AsyncGenerator[Any, Any]]:
    """An async generator function that runs each step of ``start(...)`` inside its own ``for_steps()``."""

    async def stepped(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        stream = for_steps()
        agen = start(*args, **kwargs)
        step = agen.asend(None)
        while True:
            try:
                value = await _Stepped(step, stream)
            except StopAsyncIteration:
                return
            try:
                sent = yield value
            except GeneratorExit:
                await _Stepped(agen.aclose(), stream)
                raise
            except BaseException as exc:  # noqa: BLE001 - passed into the generator, as athrow does
                step = agen.athrow(exc)
            else:
                step = agen.asend(sent)

    return stepped


async def _await_stepped(coroutine: Any, for_steps: Callable[[], Context]) -> Any:
    return await _Stepped(coroutine, for_steps())


def _identity(value: T) -> T:
    return value


_STEPPED_LATER: dict[type, Callable[[Any, Callable[[], Context]], Any]] = {
    types.GeneratorType: lambda generator, for_steps: _steps(generator, for_steps()),
    types.CoroutineType: _await_stepped,
    types.AsyncGeneratorType: lambda agen, for_steps: _stepped_async_gen_function(_identity, for_steps)(agen),
}
"""How a call's result that runs after the call is stepped, by its type."""


def _steps(inner: _Steppable, context: Context) -> Generator[Any, Any, Any]:
    """Drive a generator or coroutine, running each step inside ``context``.

    The values it yields (to the caller, or futures to the event loop) pass
    through outside the context, so the caller's draws between steps are its own.
    """
    sent: Any = None
    thrown: BaseException | None = None
    while True:
        with context:
            try:
                value = inner.throw(thrown) if thrown is not None else inner.send(sent)
            except StopIteration as stop:
                return stop.value
        try:
            sent, thrown = (yield value), None
        except GeneratorExit:
            with context:
                inner.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - thrown into the inner generator
            sent, thrown = None, exc


class _Stepped:
    """An awaitable that steps a coroutine (or an async generator's asend) inside a context."""

    __slots__ = ("context", "inner")

    def __init__(self, inner: Any, context: Context) -> None:
        self.inner, self.context = inner, context

    def __await__(self) -> Generator[Any, Any, Any]:
        return _steps(self.inner, self.context)
