"""The command line, run as a user runs it: the installed `bge-ref` script in a real process."""
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bge_ref.cli import STDIN_HINT
from tests.conftest import subprocess_env

pytestmark = pytest.mark.quick
BGE_REF = str(Path(sys.executable).with_name("bge-ref"))  # the console script pip installed beside python


def _cli(*args, stdin=None):
    return subprocess.run([BGE_REF, *args], input=stdin, capture_output=True, text=True, timeout=300,
                          env=subprocess_env())


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
    p = subprocess.Popen([BGE_REF, "embed", "--model", str(minilm_path), *texts],
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


@pytest.mark.parametrize("args, flag", [
    (["embed", "--batch-size", "0", "x"], "--batch-size"),
    (["embed", "--batch-size", "many", "x"], "--batch-size"),
    (["embed", "--pooling", "max", "x"], "--pooling"),
    (["embed", "--no-such-flag", "x"], "--no-such-flag"),
    (["serve", "--port", "eighty"], "--port"),
    (["compare", "ref.safetensors"], "theirs"),
    ([], "COMMAND"),
])
def test_usage_error_is_one_line_naming_the_flag(args, flag):
    r = _cli(*args)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout)
    assert r.stderr.startswith("bge-ref: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert flag in r.stderr and "batch_size" not in r.stderr and "usage:" not in r.stderr, r.stderr


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _wait_until_idle(p, timeout=60.0):
    """Until the process has used no CPU for a second (done importing, blocked reading stdin)."""
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        seen = (seen + [_cpu_ticks(p.pid)])[-3:]
        if len(seen) == 3 and len(set(seen)) == 1:
            return
        time.sleep(0.5)
    raise AssertionError("bge-ref never went idle")


def test_ctrl_c_is_one_line_and_exit_130(minilm_path):
    # SIGINT as a terminal leaves it: a runner started in the background (`cmd &` in a script)
    # passes SIGINT down ignored, and Python keeps an ignored SIGINT ignored.
    p = subprocess.Popen([BGE_REF, "embed", "--model", str(minilm_path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        p.stdin.write(b"a text, and stdin never ends\n")
        p.stdin.flush()
        _wait_until_idle(p)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert (p.returncode, out, err) == (130, b"", b"bge-ref: interrupted\n")


def test_trailing_blank_lines_end_stdin(minilm_path, minilm):
    r = _cli("embed", "--model", str(minilm_path), stdin="first\nsecond\n\n \n")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["shape"] == [2, 384]
    np.testing.assert_allclose(out["data"], minilm.encode(["first", "second"]), atol=1e-6)


def test_embed_on_a_terminal_says_what_it_expects(minilm_path, minilm):
    """No TEXT and stdin a terminal: a hint on stderr, then lines typed until Ctrl-D are embedded."""
    master, slave = pty.openpty()
    p = subprocess.Popen([BGE_REF, "embed", "--model", str(minilm_path)], stdin=slave,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env())
    os.close(slave)
    try:
        ready, _, _ = select.select([p.stderr], [], [], 60)
        assert ready, "bge-ref embed waited silently on a terminal"
        assert p.stderr.readline().decode() == STDIN_HINT + "\n"
        os.write(master, b"hello world\n\x04")  # a line, then Ctrl-D at the start of the next
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
        os.close(master)
    assert p.returncode == 0, err
    np.testing.assert_allclose(json.loads(out)["data"], minilm.encode(["hello world"]), atol=1e-6)
