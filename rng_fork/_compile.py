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

_RULES = "torch._dynamo.trace_rules"


def _skip_rng_fork(rules: ModuleType) -> None:
    with contextlib.suppress(Exception):  # a torch without this rule list traces as before
        rules.add(__package__ or "rng_fork")


class _WhenRulesImported(importlib.abc.MetaPathFinder):
    """Finds nothing itself; adds rng_fork to Dynamo's skip list once the rules module has run."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _RULES:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def run_then_skip(module: ModuleType) -> None:
            run(module)
            _skip_rng_fork(module)

        loader.exec_module = run_then_skip  # type: ignore[method-assign]
        return spec


def keep_dynamo_out() -> None:
    """Put rng_fork on Dynamo's skip list now, or when Dynamo is imported."""
    rules = sys.modules.get(_RULES)
    if rules is not None:
        _skip_rng_fork(rules)
    elif not any(isinstance(finder, _WhenRulesImported) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WhenRulesImported())
