"""Which frames are the user's, and how a call site is written.

A draw is reported at the innermost frame outside torch, NumPy, the standard
library and rng_fork: the line the user wrote. Code that torch.compile
generates (FX graphs, Inductor's kernels' callers, Dynamo's rewritten copy of
the compiled function) counts as torch, so a draw inside a compiled function
is reported at the line that called it.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from dataclasses import dataclass
from types import FrameType

_TRACING_DIR = os.path.dirname(os.path.abspath(__file__))
_PACKAGE_DIR = os.path.dirname(_TRACING_DIR)
_DEMO = os.path.join(_PACKAGE_DIR, "demo.py")  # a user's program that ships with rng_fork: its lines are shown


def _library_dirs() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(torch's, NumPy's and rng_fork's directories; the standard library's; packages installed inside it)."""
    import numpy
    import torch

    packages = {os.path.dirname(os.path.abspath(module.__file__ or "")) for module in (torch, numpy)}
    packages.add(_PACKAGE_DIR)
    inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if inductor:
        packages.add(os.path.abspath(inductor))
    paths = sysconfig.get_paths()
    stdlib = {os.path.abspath(paths[key]) for key in ("stdlib", "platstdlib") if paths.get(key)}
    # Packages installed into the interpreter's own lib/pythonX.Y are not the standard library.
    installed = {os.path.abspath(paths[key]) for key in ("purelib", "platlib") if paths.get(key)}
    return tuple(map(_dir, packages)), tuple(map(_dir, stdlib)), tuple(map(_dir, installed))


def _dir(path: str) -> str:
    # One trailing separator, so a prefix test matches whole directory names.
    return path.rstrip(os.sep) + os.sep


_dirs: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None = None
_library: dict[str, bool] = {}


def is_library(filename: str) -> bool:
    """Whether code in ``filename`` is torch's, NumPy's, the standard library's or rng_fork's."""
    known = _library.get(filename)
    if known is None:
        known = _library[filename] = _classify(filename)
    return known


def _classify(filename: str) -> bool:
    global _dirs
    if filename.startswith("<"):
        # Frozen stdlib modules and FX graphs; "<string>", "<stdin>" and the like are the user's.
        return filename.startswith(("<frozen ", "<eval_with_key>"))
    if _dirs is None:
        _dirs = _library_dirs()
    packages, stdlib, installed = _dirs
    path = os.path.abspath(filename)
    if path == _DEMO:
        return False
    if path.startswith(packages) or os.sep + "torchinductor_" in path:  # Inductor's default cache directory
        return True
    return path.startswith(stdlib) and not path.startswith(installed)


def is_tracer(filename: str) -> bool:
    """Whether code in ``filename`` is this tracer's own (never shown in a stack)."""
    return filename.startswith(_TRACING_DIR)


def _rewritten_by_dynamo(frame: FrameType) -> bool:
    """Whether the frame runs Dynamo's rewritten copy of a compiled function."""
    utils = sys.modules.get("torch._dynamo.utils")
    code_map = getattr(utils, "orig_code_map", None)
    try:
        return code_map is not None and frame.f_code in code_map
    except Exception:  # noqa: BLE001 - a torch whose map works otherwise: not rewritten as far as we know
        return False


def is_user(frame: FrameType) -> bool:
    """Whether ``frame`` is the user's code (see the module's docstring)."""
    return not is_library(frame.f_code.co_filename) and not _rewritten_by_dynamo(frame)


def where(frame: FrameType) -> str:
    """``"file:line in function"``."""
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"


STACK_LIMIT = 6
"""How many frames a stack shows at most: the user's first, the innermost last."""


@dataclass(frozen=True)
class Site:
    """Where something happened: the user's frame, and the frames from there down to the op."""

    filename: str
    lineno: int
    function: str
    stack: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


UNKNOWN = Site("<unknown>", 0, "<unknown>", ())


def site_of(frame: FrameType | None) -> Site:
    """The site of a call made in ``frame``: its innermost user frame, and the stack down to it."""
    chain: list[FrameType] = []
    while frame is not None:
        if not is_tracer(frame.f_code.co_filename):
            chain.append(frame)
            if is_user(frame):
                break
        frame = frame.f_back
    if not chain:
        return UNKNOWN
    user = chain[-1]
    chain.reverse()
    if len(chain) > STACK_LIMIT:
        chain = chain[: STACK_LIMIT - 1] + chain[-1:]
    return Site(user.f_code.co_filename, user.f_lineno, user.f_code.co_name, tuple(where(f) for f in chain))
