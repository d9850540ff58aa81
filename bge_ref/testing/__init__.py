"""Tools for bge-ref's own tests, scripts and benchmarks; nothing here is needed to embed.

- `checkpoints`: random BERT checkpoints saved as the hub stores them (with NumPy alone, or through
  transformers), the real all-MiniLM-L6-v2 directory, bge-large's config and test texts;
- `dumps`: other implementations' runs (transformers, ONNX Runtime) in verify's dump layout;
- `oracle`: the float64 oracle study behind the Verification report;
- `readme`: the machine line and the generated-region writer of the report scripts;
- `subprocess_env` (here): the environment for a child process running this copy of bge_ref.

Importable without sys.path edits, with NumPy alone: torch, transformers and onnxruntime are imported
inside the functions that need them.
"""
import os
from pathlib import Path

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the directory holding bge_ref/: a checkout's root


def subprocess_env(**extra) -> dict:
    """The environment for a child process (`python -m bge_ref ...`, a server, a job): this copy of
    bge_ref first on the path, whatever copy is pip-installed, and the hub offline."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT)] + paths)
    env.update({k: str(v) for k, v in extra.items()})
    return env
