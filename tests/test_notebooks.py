"""The notebooks in notebooks/ run from a clean kernel without error, on the real all-MiniLM-L6-v2,
and each committed .ipynb is its jupytext source (notebooks/NN_name.py), built and executed.

Each notebook is built from its source and executed in memory, as Jupyter runs it when it is opened in
notebooks/: the kernel's working directory is notebooks/ and PYTHONPATH is unset, so `common` comes from
beside the notebook and `bge_ref` from the installed package (`pip install -e .` of this checkout). Nothing is
written back (BGE_REF_FIGURES is unset, so no figure is saved), and any cell error fails the test.
The notebooks assert their own comparisons against transformers, so a parity break fails here too.
Needs the `notebooks` extra (matplotlib, nbclient, nbformat, ipykernel, jupytext) besides `test`.
"""
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from bge_ref.testing.checkpoints import minilm_dir
from tests.blocks import module_from_file


REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SOURCES = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT = 300  # seconds per cell; a whole notebook takes about a minute on MiniLM


def build_module():
    """notebooks/build.py, imported from its file."""
    return module_from_file(NOTEBOOK_DIR / "build.py", "notebooks_build")


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_bert_from_scratch.ipynb", "02_verification.ipynb", "03_semantic_search.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_outputs(path):
    """The committed file was executed top to bottom (readers on a code host see its outputs)."""
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert cells, f"{path.name} has no code cells"
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), \
        f"{path.name}: not executed in order from a fresh kernel"
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"], f"{path.name} holds an error"
    first = "".join(o.get("text", "") for o in cells[0].outputs)
    assert "Model:" in first, f"{path.name}: the first cell does not say which model it ran on"
    assert any("image/png" in o.get("data", {}) for c in cells for o in c.outputs), f"{path.name}: no figure"


def test_every_notebook_has_a_source():
    assert [p.stem for p in SOURCES] == [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_committed_notebook_matches_its_source(source):
    """Edit the .py, then rebuild with notebooks/build.py: the .ipynb must not drift from it."""
    built = build_module().notebook(source)
    committed = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    cells = lambda nb: [(c.cell_type, c.source) for c in nb.cells]  # noqa: E731
    assert cells(committed) == cells(built), f"{source.with_suffix('.ipynb').name} drifted from {source.name}; " \
        "run notebooks/build.py"


def files_in(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("BGE_REF_MODEL", str(minilm_dir()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.delenv("BGE_REF_FIGURES", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)  # as in Jupyter: only the notebook's folder and site-packages
    nb = build_module().notebook(path)  # from the source: no committed output is what we check
    before = files_in(NOTEBOOK_DIR)
    start = time.perf_counter()
    NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()  # raises CellExecutionError
    print(f"{path.name}: executed in {time.perf_counter() - start:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert files_in(NOTEBOOK_DIR) == before, "the notebook wrote files into its folder"
