"""The README's examples run as pasted: every ```python block, and the quick start's `bge-ref embed`.

Blocks run in order in one fresh interpreter per block, in a temporary directory, with
$BGE_REF_MODEL pointing at the real all-MiniLM-L6-v2 (the README's default, bge-large-en-v1.5, is
not reachable offline). A block that calls a server at http://localhost:8080 runs against a real
`bge-ref serve` of MiniLM on a free loopback port (only the port is changed), with the API token
variables the examples read set to its key. The compare walk-through's Python step runs between its two
commands: `bge-ref reference` first (on MiniLM), `bge-ref compare` after, which must pass.
"""
import json
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, subprocess_env
from tests.test_server import HOSTED, KEY, Served

README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
SERVER = "http://localhost:8080"


@pytest.fixture(scope="module")
def served(tmp_path_factory, minilm_path):
    s = Served(tmp_path_factory.mktemp("readme"), minilm_path, "--api-key", KEY, "--served-model-name", HOSTED)
    try:
        yield s
    finally:
        s.stop()


def test_readme_has_examples():
    assert len(BLOCKS) >= 1 and "bge_ref.load(" in BLOCKS[0]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_python_block_runs_as_pasted(index, minilm_path, tmp_path, request):
    code, env = BLOCKS[index], {"BGE_REF_MODEL": minilm_path}
    if SERVER in code:
        srv = request.getfixturevalue("served")
        code = code.replace(SERVER, srv.base)
        env.update(CLOUDFLARE_API_TOKEN=KEY, CLOUDFLARE_AUTH_TOKEN=KEY)
    walkthrough = 'load_file("ref.safetensors")' in code
    if walkthrough:  # step 1, as the README's command writes it, on MiniLM
        cli("reference", "--model", str(minilm_path), "--texts", "hello world", "Café au lait", "-o", "ref.safetensors",
            cwd=tmp_path)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env=subprocess_env(**env))
    assert r.returncode == 0, f"README python block {index} failed:\n{code}\n{r.stderr[-3000:]}"
    if walkthrough:  # step 3: bge_ref's float32 stand-in passes against its float64 reference
        out = cli("compare", "ref.safetensors", "mine.safetensors", cwd=tmp_path)
        assert out.stdout.strip().splitlines()[-1].startswith("PASS"), out.stdout


def cli(*args, cwd):
    r = subprocess.run([sys.executable, "-m", "bge_ref", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                       env=subprocess_env())
    assert r.returncode == 0, f"bge-ref {' '.join(args)}: {r.stderr}"
    return r


def test_quick_start_embed_command(minilm, tmp_path):
    """The quick start's first command, after its `pip install ... &&`: prints the two texts' vectors."""
    line = next(l for l in README.splitlines() if l.startswith("pip install") and "&& bge-ref embed" in l)
    embed = line.split("&&", 1)[1].strip()
    assert embed.startswith("bge-ref embed ")
    # bge-ref is `python -m bge_ref` of this checkout; the shell runs the $(python -c ...) part as written
    cmd = embed.replace("bge-ref ", f"{shlex.quote(sys.executable)} -m bge_ref ", 1).replace(
        "$(python ", f"$({shlex.quote(sys.executable)} ", 1)
    r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env=subprocess_env())
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    texts = re.findall(r'"([^"$]+)"', embed.split(")\"", 1)[1])
    assert out["shape"] == [len(texts), 384] and texts == ["hello world", "another text"]
    np.testing.assert_allclose(out["data"], minilm.encode(texts), atol=1e-6)
