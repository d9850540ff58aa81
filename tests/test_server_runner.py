"""The runner: the listening socket, and the process's exit."""
import socket
import subprocess
import sys

import pytest

from .conftest import subprocess_env

pytestmark = pytest.mark.quick  # needs the serve extra and its clients, no torch


def test_a_busy_port_is_one_line_and_exit_2(minilm_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "bge_ref", "serve", "--model", str(minilm_path), "--port", str(port)],
                           capture_output=True, timeout=120, env=subprocess_env())
    assert r.returncode == 2 and r.stdout == b""
    assert r.stderr.decode().splitlines() == [f"bge-ref: error: port {port} on 127.0.0.1 is already in use"]


def test_missing_serve_extra_is_one_line(minilm_path):
    block = "import runpy, sys; sys.modules['starlette'] = None; runpy.run_module('bge_ref', run_name='__main__')"
    r = subprocess.run([sys.executable, "-c", block, "serve", "--model", str(minilm_path)], capture_output=True,
                       timeout=120, env=subprocess_env())
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("bge-ref: error: ") and 'pip install "bge-ref[serve]"' in lines[0]


def test_bad_limits_are_one_line(minilm_path):
    for flag, value in [("--max-connections", "0"), ("--body-timeout", "-1"), ("--max-batch-tokens", "0")]:
        r = subprocess.run([sys.executable, "-m", "bge_ref", "serve", "--model", str(minilm_path), flag, value],
                           capture_output=True, timeout=120, env=subprocess_env())
        assert r.returncode == 2 and r.stderr.decode().splitlines() == [
            f"bge-ref: error: {flag} must be positive, got {float(value) if flag == '--body-timeout' else value}"]
