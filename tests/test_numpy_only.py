"""bge_ref with NumPy alone: a fresh venv holding only the oldest numpy pyproject.toml allows, and
bge-ref installed with --no-deps (no tokenizers, safetensors or huggingface-hub), embeds all-MiniLM-L6-v2
from its directory through the API and the CLI, with the vectors of the full install.

The oldest numpy: pyproject.toml's bound, numpy>=1.24 (1.24.0 is the first release with wheels for
Python 3.11, CI's Python). Pyodide 0.27 ships numpy 2.0.2, inside the same bound.
"""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REPO, TEXTS

EMBED = r"""
import importlib.util, json, sys
import numpy, bge_ref
for name in ("tokenizers", "safetensors", "huggingface_hub", "torch"):
    assert importlib.util.find_spec(name) is None, name + " is installed"
model = bge_ref.load(sys.argv[1])
assert model.tokenizer.backend == "python", model.tokenizer.backend  # the default without tokenizers
try:
    bge_ref.load(sys.argv[1], tokenizer="tokenizers")
    missing_tokenizers = "no error"
except bge_ref.BgeRefError as e:
    missing_tokenizers = str(e)
print(json.dumps({"numpy": numpy.__version__, "bge_ref": bge_ref.__file__, "error": missing_tokenizers,
                  "vectors": model.encode(json.loads(sys.argv[2])).tolist()}))
"""


def oldest_numpy() -> str:
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    return re.search(r'"numpy>=([0-9.]+)"', pyproject).group(1)


def run(*args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.slow
def test_numpy_only_install_embeds_like_the_full_one(minilm, minilm_path, tmp_path):
    # The venv gets no pip of its own: this interpreter's pip installs into it, so it holds only numpy.
    venv, src = tmp_path / "venv", tmp_path / "src"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = str(venv / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--disable-pip-version-check"]
    version = oldest_numpy()
    run(*pip, "--only-binary=:all:", f"numpy=={version}")
    shutil.copytree(REPO / "bge_ref", src / "bge_ref", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):  # a copy: the build writes into its source
        shutil.copy(REPO / name, src)
    run(*pip, "--no-deps", str(src))
    installed = json.loads(run(sys.executable, "-m", "pip", "--python", python, "list", "--format=json"))
    assert {p["name"] for p in installed} == {"numpy", "bge-ref"}

    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}  # no PYTHONPATH: the installed copy is imported
    api = json.loads(run(python, "-c", EMBED, str(minilm_path), json.dumps(TEXTS), cwd=tmp_path, env=env))
    assert api["numpy"].split(".") == (version.split(".") + ["0", "0"])[:3]  # 1.24 is 1.24.0
    assert api["bge_ref"].startswith(str(venv))
    assert "needs the tokenizers package: pip install tokenizers" in api["error"]
    cli = json.loads(run(python, "-m", "bge_ref", "embed", "--model", str(minilm_path), *TEXTS, cwd=tmp_path, env=env))

    # Not bit-exact: numpy 1.24.0 bundles an older OpenBLAS than the full install's numpy, and its
    # float32 sgemm kernels add in another order, so vectors differ in their last bits (2e-7 measured).
    full = minilm.encode(TEXTS)
    for vectors in (api["vectors"], cli["data"]):
        np.testing.assert_allclose(np.array(vectors, dtype=np.float32), full, rtol=0, atol=1e-6)
