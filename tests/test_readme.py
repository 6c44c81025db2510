"""Every example in the README runs as written, top to bottom, and every link in it and in docs/ resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
CELLS = re.findall(r"```ipython\n(.*?)```", README.read_text(), flags=re.S)
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 5
    assert len(CELLS) >= 2


def test_readme_examples_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where an example would leave files behind
    namespace: dict[str, object] = {"__name__": "readme"}
    for number, block in enumerate(BLOCKS, 1):
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message says which block failed
            raise AssertionError(f"README python block {number} failed: {exc!r}\n{block}") from exc
    # Run from a checkout, the examples must not write into it (checkpoints go to temporary folders).
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_adding_a_source_needs_nothing_but_its_section() -> None:
    """A contributor reads only "Adding a source": its examples run alone, in a fresh namespace."""
    section = re.search(r"^## Adding a source.*?(?=^## )", README.read_text(), flags=re.S | re.M)
    assert section is not None
    blocks = re.findall(r"```python\n(.*?)```", section.group(0), flags=re.S)
    assert len(blocks) >= 2
    namespace: dict[str, object] = {"__name__": "readme_adding_a_source"}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"README.md 'Adding a source' block {number}", "exec"), namespace)
    import rng_fork

    # The examples clean up after themselves: no source of theirs stays registered.
    assert not {"keyholder", "simulator"} & {s.name for s in rng_fork.registered_sources()}


def test_readme_notebook_cells_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    monkeypatch.chdir(tmp_path)
    config = Config()
    config.HistoryManager.hist_file = ":memory:"  # never touch the user's IPython history
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance(config=config, colors="nocolor")
    try:
        shell.run_cell("import torch", store_history=True)  # what the README's Python examples imported before
        for number, cell in enumerate(CELLS, 1):
            result = shell.run_cell(cell, store_history=True)
            error = result.error_before_exec or result.error_in_exec
            assert result.success, f"README ipython cell {number} failed: {error!r}\n{cell}"
    finally:
        if "rng_fork" in shell.extension_manager.loaded:
            shell.run_line_magic("unload_ext", "rng_fork")
        InteractiveShell.clear_instance()


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # a '# comment' in a block is no heading
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no heading #{fragment} in {linked.name}")
    assert not broken, "\n".join(broken)
