"""Run the ```bash and ```python blocks of a markdown page as a reader pastes them into one terminal.

Used by tests/test_readme.py and tests/test_docs.py. A page is one session, in order:
- the session starts in a fresh copy of this checkout (as a clone), with none of the variables the
  pages set themselves (BGE_REF_MODEL, BGE_REF_API_KEY, CLOUDFLARE_*): a page that needs one sets it,
  and what a bash block exports carries over to the page's later blocks, as in a terminal;
- a ```python block runs in a fresh interpreter; a ```bash block in `bash -euo pipefail`;
- a bash block that starts `bge-ref serve` runs its server in the background until the page ends (the
  reader's second terminal); the page's later blocks reach it at localhost:8080, which is the only text
  changed: 8080 becomes a free port;
- what cannot run inside a test is checked instead of run: `pip install` (everything is installed
  already; the extras and packages it names must exist, and tests/test_readme.py runs the quick start's
  install in a fresh venv), `bash .ci/run` (CI itself), `jupyter lab DIR` (a desktop application).
Any other fence (```text, ```json: output samples) is not run.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO, subprocess_env

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
PAGE_VARIABLES = ("BGE_REF_MODEL", "BGE_REF_API_KEY", "CLOUDFLARE_API_TOKEN", "CLOUDFLARE_ACCOUNT_ID")
PORT_TEXT = re.compile(r"(localhost:|127\.0\.0\.1:|--port )8080\b")
TIMEOUT = 600


@dataclass
class Block:
    lang: str
    code: str
    line: int  # where the block starts in its page, for failure messages


def module_from_file(path: Path, name: str):
    """The Python file at `path` imported as module `name` (docs/ and notebooks/ are not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def blocks(markdown: str, langs=("bash", "python")) -> list[Block]:
    return [Block(m.group(1), m.group(2), markdown.count("\n", 0, m.start()) + 1)
            for m in FENCE.finditer(markdown) if m.group(1) in langs]


def commands(code: str) -> list[str]:
    """The block's commands, backslash-continued lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def extras() -> set[str]:
    return set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def check_pip(command: str):
    """A `pip install ...` the environment has already done: what it names must exist."""
    words = [w for w in shlex.split(command.split("#", 1)[0])[2:] if not w.startswith("-")]
    assert words, command
    for word in words:
        name, _, rest = word.partition("[")
        for extra in filter(None, rest.rstrip("]").split(",")):
            assert extra in extras(), f"{command}: no extra {extra!r} in pyproject.toml"
        if name not in (".", "bge-ref"):
            importlib.metadata.version(name)  # installed, so the name is a real package


def check_static(command: str) -> bool:
    """Check a command that cannot run inside a test; False if it is an ordinary one to run."""
    if command.startswith("pip install "):
        check_pip(command)
    elif command.strip() == "bash .ci/run":
        assert (REPO / ".ci" / "run").is_file()
    elif command.startswith("jupyter lab"):
        assert any(d.startswith("jupyterlab") for d in tomllib.loads((REPO / "pyproject.toml").read_text())
                   ["project"]["optional-dependencies"]["notebooks"]), "the notebooks extra lacks jupyterlab"
        assert (REPO / shlex.split(command)[2]).is_dir(), command
    else:
        return False
    return True


def runnable(code: str) -> tuple[str, str | None]:
    """(the part of a bash block to run now, the `bge-ref serve` command to start in the background).
    `pip install X && rest` checks the pip part and keeps the rest."""
    now, serve = [], None
    for command in commands(code):
        parts = [p.strip() for p in command.split(" && ")]
        while parts and check_static(parts[0]):
            parts.pop(0)
        if not parts:
            continue
        command = " && ".join(parts)
        if command.startswith("bge-ref serve"):
            assert serve is None, "one server per block"
            serve = command
        else:
            assert serve is None, f"a command after `bge-ref serve` in the same block: {command}"
            now.append(command)
    return "\n".join(now), serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    """One page's terminal: a working copy of the checkout, the environment, background servers."""

    def __init__(self, workdir: Path):
        self.cwd = workdir / "checkout"
        shutil.copytree(REPO, self.cwd, ignore=shutil.ignore_patterns(
            ".git", "__pycache__", "*.egg-info", "build", "site", ".pytest_cache", ".hypothesis", "*.ipynb"))
        self.env = {k: v for k, v in subprocess_env().items() if k not in PAGE_VARIABLES}
        self.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), self.env.get("PATH", "")])
        self.env_file = workdir / "env"
        self.port = free_port()
        self.servers: list[subprocess.Popen] = []

    def local(self, code: str) -> str:
        return PORT_TEXT.sub(lambda m: f"{m.group(1)}{self.port}", code)

    def run(self, block: Block, where: str):
        if block.lang == "python":
            r = subprocess.run([sys.executable, "-c", self.local(block.code)], cwd=self.cwd, env=self.env,
                               capture_output=True, text=True, timeout=TIMEOUT)
            assert r.returncode == 0, f"{where}: python block failed:\n{block.code}\n{r.stderr[-3000:]}"
            return r
        now, serve = runnable(block.code)
        r = self.bash(now, where, block.code) if now else None
        if serve:
            self.start_server(self.local(serve), where)
        return r

    def bash(self, script: str, where: str, shown: str):
        script = f"{self.local(script)}\nenv -0 > {shlex.quote(str(self.env_file))}\n"
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.cwd, env=self.env,
                           capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == 0, f"{where}: bash block failed (exit {r.returncode}):\n{shown}\n{r.stderr[-3000:]}"
        entries = self.env_file.read_bytes().split(b"\0")
        self.env = dict(e.decode().split("=", 1) for e in entries if b"=" in e)  # its exports carry over
        return r

    def start_server(self, command: str, where: str):
        p = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.cwd, env=self.env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.servers.append(p)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert p.poll() is None, f"{where}: `{command}` exited {p.returncode}:\n{p.stderr.read()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"{where}: `{command}` did not answer /health within 180 s")

    def close(self):
        for p in self.servers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # drains and exits 0
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def run_page(markdown: str, name: str, workdir: Path) -> Session:
    """Run every bash and python block of a page in order; returns the closed session."""
    session = Session(workdir)
    try:
        for block in blocks(markdown):
            session.run(block, f"{name}, line {block.line}")
    finally:
        session.close()
    return session
