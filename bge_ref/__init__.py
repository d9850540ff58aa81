"""bge_ref: a pure-NumPy reference implementation of the BAAI/bge-large-en-v1.5 text embedding model."""
import os

# After each matmul OpenBLAS's idle threads busy-wait for 2^28 cycles (~0.1 s) before sleeping, so
# they hold a core while the GELU and attention threads that follow need it: 2^4 cycles gives it back
# at once (bge-large 8 x 128: 3.99 s -> 3.32 s; large matmuls lose nothing). OpenBLAS reads this when
# NumPy loads it, so it takes effect only if bge_ref is imported before NumPy; a value already set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
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
