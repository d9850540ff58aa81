"""The command line, run as a user runs it."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import subprocess_env

pytestmark = pytest.mark.quick  # needs no torch


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "bge_ref", *args], input=stdin, capture_output=True,
                          text=True, timeout=300, env=subprocess_env())


def test_embed_args_and_stdin(minilm_path, minilm):
    r = _cli("embed", "--model", str(minilm_path), "hello world", "second text")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["shape"] == [2, 384] and out["pooling"] == "mean"
    np.testing.assert_allclose(out["data"], minilm.encode(["hello world", "second text"]), atol=1e-7)
    r = _cli("embed", "--model", str(minilm_path), "--pooling", "cls", "--no-normalize", "--query",
             stdin="hello world\n")
    out = json.loads(r.stdout)
    ref = minilm.encode_queries(["hello world"], pooling="cls", normalize=False)
    np.testing.assert_allclose(out["data"], ref, atol=1e-6)


def test_info(minilm_path):
    info = json.loads(_cli("info", "--model", str(minilm_path)).stdout)
    assert info["config"]["hidden_size"] == 384 and info["max_length"] == 256 and info["pooling"] == "mean"


def test_bad_model_is_a_clean_error(tmp_path):
    r = _cli("embed", "--model", str(tmp_path), "x")
    assert r.returncode == 2 and "config.json not found" in r.stderr and "Traceback" not in r.stderr


def test_reader_leaving_early_is_not_a_traceback(minilm_path):
    texts = ["a", "b"] * 50  # ~0.7 MB of JSON: far more than a pipe buffers, so the write must fail
    p = subprocess.Popen([sys.executable, "-m", "bge_ref", "embed", "--model", str(minilm_path), *texts],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env())
    p.stdout.read(10)
    p.stdout.close()  # like `| head -c 10`
    err = p.stderr.read()
    assert p.wait(timeout=300) != 0 and b"Traceback" not in err


def test_blank_stdin_line_is_an_error_naming_it(minilm_path, minilm):
    r = _cli("embed", "--model", str(minilm_path), stdin="first\n\nthird\n")
    assert r.returncode == 2 and r.stderr.startswith("bge-ref: error: stdin line 2 is blank"), r.stderr
    r = _cli("embed", "--model", str(minilm_path), "--skip-blank", stdin="first\n  \nthird\n")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["lines"] == [1, 3] and out["shape"] == [2, 384]
    np.testing.assert_allclose(out["data"], minilm.encode(["first", "third"]), atol=1e-6)


def test_no_text_and_version_follow_the_convention(minilm_path):
    r = _cli("embed", "--model", str(minilm_path), stdin="")
    assert r.returncode == 2 and r.stderr == "bge-ref: error: embed: no text given (pass TEXT arguments or lines on stdin)\n"
    import bge_ref
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"bge-ref {bge_ref.__version__}"
