"""Keep torch.compile out of rng_fork: Dynamo runs its code eagerly, at a graph break.

A fork must run in Python anyway, and Dynamo cannot trace it: it cannot
represent a generator's state (it warns about ``Generator.get_state``) and its
NumPy translation fails on NumPy's state APIs. Dynamo skips the files under the
directories on its skip list, so rng_fork adds its own directory there as soon
as Dynamo's rules are imported. torch.compile imports them lazily; importing
them with rng_fork would add a second to ``import rng_fork``.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_RULES = "torch._dynamo.trace_rules"
_MARK = "_rng_fork_skip_hook"


def _skip_rng_fork(rules: ModuleType) -> None:
    with contextlib.suppress(Exception):  # a torch without this rule list traces as before
        rules.add(__package__ or "rng_fork")


class _SkipAfterExec(importlib.abc.Loader):
    """The rules module's own loader, followed by adding rng_fork to the skip list."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _skip_rng_fork(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... as the real loader
        return getattr(self._loader, name)


class _WhenRulesImported(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of Dynamo's rules module, once."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _RULES:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _SkipAfterExec(spec.loader)
            return spec
        except Exception:  # noqa: BLE001 - never stand in the way of the import itself
            return None


def keep_dynamo_out() -> None:
    """Put rng_fork on Dynamo's skip list now, or when Dynamo is imported."""
    rules = sys.modules.get(_RULES)
    if rules is not None:
        _skip_rng_fork(rules)
    elif not any(getattr(finder, _MARK, False) for finder in sys.meta_path):
        finder = _WhenRulesImported()
        setattr(finder, _MARK, True)
        sys.meta_path.insert(0, finder)
