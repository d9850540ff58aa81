"""bge_ref: a pure-NumPy reference implementation of the BAAI/bge-large-en-v1.5 text embedding model."""
import os

# After each call OpenBLAS's idle threads busy-wait for a while, then sleep; waking one costs
# about 100 us on a VM, more than a query's BLAS call. 2^23 cycles (3 ms at 2.6 GHz) keeps them
# awake across a forward's calls, not through the long splits where bge_ref's own threads need the
# cores (OpenBLAS's 2^28, 0.1 s: bge-large 8 x 128 3.99 s -> 3.32 s with 2^4). OpenBLAS reads this when
# NumPy loads it, so it takes effect only if bge_ref is imported before NumPy; a value already set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "23")
import re
from importlib import metadata
from pathlib import Path

from .config import BertConfig
from .embedder import QUERY_INSTRUCTION, Embedder, load
from .errors import BgeRefError, CheckpointError, InputError, NumericalError


def _version() -> str:
    """The installed distribution's version; in a source checkout that is not installed, pyproject.toml's
    (the one place the version is written)."""
    try:
        return metadata.version("bge-ref")
    except metadata.PackageNotFoundError:
        pass
    try:
        text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return "0+unknown"
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    return m.group(1) if m else "0+unknown"


__version__ = _version()
__all__ = ["load", "Embedder", "BertConfig", "QUERY_INSTRUCTION", "BgeRefError", "InputError", "CheckpointError",
           "NumericalError"]
