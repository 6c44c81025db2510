"""examples/notebook.ipynb, executed by a real Jupyter kernel running this interpreter."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "notebook.ipynb"


def execute(notebook: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run every cell in a fresh ``python3`` kernel and return the executed notebook.

    The kernelspec is written here and put first on the Jupyter path, so the
    kernel is this interpreter (not whatever ``python3`` the machine has), and
    imports this checkout of rng_fork; a scratch IPython directory keeps the
    user's startup files and history out of it.
    """
    spec = scratch / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(scratch / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(scratch / "ipython"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(notebook.parent)}}
    )
    client.execute()
    return nb


def text(cell: Any) -> str:
    """Everything a cell printed or displayed, as plain text."""
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif output["output_type"] in ("execute_result", "display_data"):
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return execute(NOTEBOOK, tmp_path_factory.mktemp("kernel"), monkeypatch)


@pytest.fixture(scope="module")
def executed(notebook: Any) -> dict[str, Any]:
    """The executed notebook's cells, keyed by their tags."""
    return {tag: cell for cell in notebook.cells for tag in cell.metadata.get("tags", [])}


@pytest.mark.slow
def test_plain_evaluation_changes_the_next_epoch(executed: dict[str, Any]) -> None:
    assert "epoch 2 identical to the reference: False" in text(executed["after-plain"])


@pytest.mark.slow
def test_evaluation_in_fork_rng_leaves_the_next_epoch_identical(executed: dict[str, Any]) -> None:
    after = text(executed["after-forked"])
    assert "epoch 2 identical to the reference: True" in after
    # The printed losses too, as a check that does not rely on the notebook's own comparison.
    reference_line = text(executed["reference"]).strip()
    assert reference_line.startswith("epoch 2 losses: [")
    assert reference_line in after
    assert reference_line not in text(executed["after-plain"])


@pytest.mark.slow
def test_the_forked_cell_displays_its_value_and_starts_from_the_current_state(executed: dict[str, Any]) -> None:
    forked = executed["forked-evaluation"]
    assert [output["output_type"] for output in forked.outputs] == ["execute_result"]
    accuracy = float(text(forked))
    assert 0.5 < accuracy <= 1.0
    assert text(forked) == text(executed["plain-evaluation"])


@pytest.mark.slow
def test_seed_and_generators_options(executed: dict[str, Any]) -> None:
    first = text(executed["seeded-1"])
    assert first.startswith("seeded draws: [") and first == text(executed["seeded-2"])
    assert "noise generator untouched: True" in text(executed["noise-untouched"])


@pytest.mark.slow
def test_an_error_is_shown_and_the_state_restored(executed: dict[str, Any]) -> None:
    errors = [output for output in executed["error"].outputs if output["output_type"] == "error"]
    assert len(errors) == 1
    assert errors[0]["ename"] == "RuntimeError" and errors[0]["evalue"] == "evaluation crashed"
    assert any('raise RuntimeError("evaluation crashed")' in line for line in errors[0]["traceback"])
    assert "RNG state as before the failing cell: True" in text(executed["after-error"])


@pytest.mark.slow
def test_only_the_cell_meant_to_fail_failed(notebook: Any) -> None:
    failed = [cell for cell in notebook.cells if any(o["output_type"] == "error" for o in cell.get("outputs", []))]
    assert [cell.metadata.get("tags") for cell in failed] == [["raises-exception", "error"]]
    assert all(cell.get("execution_count") for cell in notebook.cells if cell.cell_type == "code"), "every cell ran"
