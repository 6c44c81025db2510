"""The ``%%fork_rng`` and ``%%rng_trace`` cell magics: run a notebook cell without changing what
later cells draw, and see which lines of a cell drew from which generator.

Load it with ``%load_ext rng_fork``; IPython is needed only here, never by
``import rng_fork``.

Example::

    %load_ext rng_fork

    %%fork_rng
    evaluate(model, test_loader)     # the next training cell draws as if this never ran

    %%fork_rng --seed 0 --generators rng,loader
    show_samples(rng, loader)        # the same samples every time, and rng/loader untouched

    %%rng_trace
    evaluate(model, test_loader)     # runs as usual; then: which lines drew what (or %%fork_rng --trace)
"""

from __future__ import annotations

import ast
from types import CodeType
from typing import Any

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, cell_magic, magics_class, output_can_be_silenced
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .fork import fork_rng as _fork_rng
from .sources import generator_sources
from .trace import trace as _trace

MAGIC_NAME = "fork_rng"
TRACE_MAGIC_NAME = "rng_trace"


@magics_class
class ForkRngMagics(Magics):
    """The magics ``%load_ext rng_fork`` registers: ``%%fork_rng`` and ``%%rng_trace``."""

    # Named "%fork_rng": IPython's usage line adds one more "%", giving "%%fork_rng".
    @magic_arguments(name="%" + MAGIC_NAME)
    @argument(
        "--seed",
        type=int,
        default=None,
        help="an int in [0, 2**32) that seeds every forked generator, so the cell draws the same numbers each run",
    )
    @argument(
        "--generators",
        default=None,
        metavar="NAME[,NAME...]",
        help="variables holding generator objects to fork as well (torch.Generator, NumPy Generator or "
        "RandomState, random.Random, DataLoader), looked up when the cell runs",
    )
    @argument(
        "--trace",
        action="store_true",
        help="also print which lines of the cell drew from which generator (rng_fork.trace)",
    )
    @cell_magic
    @output_can_be_silenced
    def fork_rng(self, line: str, cell: str) -> Any:
        """Run the cell with every RNG forked: later cells draw as if it had never run.

        Python's ``random``, NumPy's global generator, torch's CPU generator and
        every initialized accelerator device are saved before the cell and restored
        after it, also when it raises (the error is shown as usual). The value
        of a last expression is displayed as for any cell. Options are checked
        before the cell runs. Top-level ``await`` is not supported in the cell.

        Example::

            %%fork_rng --seed 0 --generators rng
            rng.normal(size=3)
        """
        # The machinery of this magic is not what a user debugs: keep it out of tracebacks.
        __tracebackhide__ = True
        try:
            args = parse_argstring(self.fork_rng, line)
        except UsageError as exc:
            raise UsageError(f"%%{MAGIC_NAME}: {exc}") from None
        generators = self._generators(args.generators)
        fork = self._fork(args.seed, generators)
        body, last = self._compile(line, cell)
        with fork:
            return self._run(body, last, _trace(generators=generators) if args.trace else None)

    @magic_arguments(name="%" + TRACE_MAGIC_NAME)
    @argument(
        "--generators",
        default=None,
        metavar="NAME[,NAME...]",
        help="variables holding generator objects to watch as well (torch.Generator, NumPy Generator or "
        "RandomState, random.Random, DataLoader), looked up when the cell runs",
    )
    @cell_magic
    @output_can_be_silenced
    def rng_trace(self, line: str, cell: str) -> Any:
        """Run the cell as usual, then print which of its lines drew from which generator.

        The cell's draws are kept (use ``%%fork_rng --trace`` to also undo them). The
        report names the cell's lines as ``Cell In[n]:k``.

        Example::

            %%rng_trace
            evaluate(model, test_loader)
        """
        __tracebackhide__ = True
        try:
            args = parse_argstring(self.rng_trace, line)
        except UsageError as exc:
            raise UsageError(f"%%{TRACE_MAGIC_NAME}: {exc}") from None
        generators = self._generators(args.generators, magic=TRACE_MAGIC_NAME)
        body, last = self._compile(line, cell, magic=TRACE_MAGIC_NAME)
        return self._run(body, last, _trace(generators=generators))

    def _run(self, body: CodeType, last: CodeType | None, tracer: _trace | None) -> Any:
        """Run a compiled cell (under ``tracer``, then print its report) and return its last value."""
        __tracebackhide__ = True
        shell = self._shell
        # The namespaces IPython runs a plain cell in (they differ in an embedded shell).
        namespaces = (shell.user_global_ns, shell.user_ns)
        if tracer is None:
            exec(body, *namespaces)
            return eval(last, *namespaces) if last is not None else None
        try:
            with tracer:
                exec(body, *namespaces)
                return eval(last, *namespaces) if last is not None else None
        finally:
            print(tracer.report(labels={body.co_filename: f"Cell In[{self._cell_number()}]"}))

    @property
    def _shell(self) -> InteractiveShell:
        # A Magics instance registered by load_ipython_extension always has its shell.
        assert self.shell is not None
        return self.shell

    def _generators(self, spec: str | None, magic: str = MAGIC_NAME) -> list[object]:
        """The objects named in ``--generators``, or a ``UsageError`` naming what is wrong."""
        if spec is None:
            return []
        names = [name.strip() for name in spec.split(",")]
        if not all(names):
            raise UsageError(f"%%{magic}: --generators takes comma-separated variable names, got {spec!r}")
        namespace = self._shell.user_ns
        missing = [name for name in names if name not in namespace]
        if missing:
            raise UsageError(
                f"%%{magic}: --generators names {', '.join(map(repr, missing))}, "
                "but there is no such variable in the notebook"
            )
        for name in names:
            try:
                generator_sources([namespace[name]])
            except TypeError as exc:
                raise UsageError(f"%%{magic}: --generators {name}: {exc}") from None
        return [namespace[name] for name in names]

    @staticmethod
    def _fork(seed: int | None, generators: list[object]) -> _fork_rng:
        # fork_rng validates everything before touching a generator, so a bad
        # option stops here, before the cell has run at all.
        try:
            return _fork_rng(seed, generators=generators)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"%%{MAGIC_NAME}: {exc}") from None

    def _compile(self, line: str, cell: str, magic: str = MAGIC_NAME) -> tuple[CodeType, CodeType | None]:
        """Compile the cell as IPython would, splitting off a last expression to display.

        The code is cached under the running cell's number with the magic's own
        line first, so a traceback shows ``Cell In[n], line k`` with the line
        the user sees at line k of the cell.
        """
        shell = self._shell
        compiler: Any = shell.compile  # typed for source text, but takes an AST like builtin compile()
        body = shell.transform_cell(cell)
        shown = f"%%{magic} {line}".rstrip() + "\n" + body
        filename = compiler.cache(shown, self._cell_number(), raw_code=shown)
        try:
            # A blank first line stands in for the magic's, so line numbers match.
            tree = shell.transform_ast(compiler.ast_parse("\n" + body, filename=filename))
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = compiler(ast.Expression(tree.body.pop().value), filename, "eval")
            return compiler(tree, filename, "exec"), last
        except SyntaxError as exc:
            # Shown as for any cell: raised from here, IPython would list its own
            # and this magic's frames above it. The UsageError marks the cell failed.
            shell.showsyntaxerror(filename)
            hint = f" (top-level await does not work inside %%{magic})" if "'await'" in str(exc) else ""
            raise UsageError(f"%%{magic}: the cell has a syntax error (shown above) and did not run{hint}") from None

    def _cell_number(self) -> int:
        # The running cell's ExecutionResult has its number; the shell's counter
        # may already point at the next cell (IPython 9 counts before running).
        running = self._shell.displayhook.exec_result
        number = getattr(running, "execution_count", None)
        return number if isinstance(number, int) else int(self._shell.execution_count)


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """Register ``%%fork_rng`` and ``%%rng_trace``; IPython calls this for ``%load_ext rng_fork``."""
    ipython.register_magics(ForkRngMagics)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """Remove ``%%fork_rng`` and ``%%rng_trace``; IPython calls this for ``%unload_ext rng_fork``."""
    ipython.magics_manager.magics["cell"].pop(MAGIC_NAME, None)
    ipython.magics_manager.magics["cell"].pop(TRACE_MAGIC_NAME, None)
    ipython.magics_manager.registry.pop(ForkRngMagics.__name__, None)
