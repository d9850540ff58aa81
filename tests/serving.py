"""What the server tests share: a real `python -m bge_ref serve` process on a free loopback port,
the keys and names it is started with, and readers of the two error formats."""
import json
import signal
import socket
import subprocess
import sys
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from .conftest import TEXTS, subprocess_env

KEY, ENV_KEY = "test-key-1", "env-key-2"
HOSTED = "@cf/baai/bge-large-en-v1.5"
NAMES = ["all-MiniLM-L6-v2", HOSTED]
NAMED = [a for n in NAMES for a in ("--served-model-name", n)]  # serve's flags for NAMES
RUN = "/client/v4/accounts/acct/ai/run/"
MORE = TEXTS + ["Embedding models truncate long inputs. " * 200, "x" * 3, "Numbers 3.14159 and 2,718 too."]  # as test_embedder's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A `python -m bge_ref serve` process on a free loopback port, up once /health answers."""

    def __init__(self, tmp_path, model, *args, env=None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"serve-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "bge_ref", "serve", "--model", str(model),
                                          "--port", str(self.port), *args],
                                         env=subprocess_env(**(env or {})), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}: {self.log.read_text()}"
            try:
                if requests.get(self.base + "/health", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server not up after 90 s: {self.log.read_text()}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def post(self, path, body=None, key=KEY, **kw):
        headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **kw.pop("headers", {})}
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return requests.post(self.base + path, data=data, headers=headers, timeout=kw.pop("timeout", 120), **kw)

    def get(self, path, key=KEY):
        return requests.get(self.base + path, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)

    def metrics(self, key=KEY) -> dict:
        r = self.get("/metrics", key)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(r.text) for s in f.samples}

    def wait_metric(self, name, predicate, key=KEY, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.metrics(key).get((name, ()), 0)
            if predicate(value):
                return value
            time.sleep(0.05)
        raise AssertionError(f"{name} never met the condition in {timeout} s")


def run_error(r, status):
    body = r.json()
    assert r.status_code == status and body["result"] is None and body["success"] is False
    assert body["messages"] == [] and [e["code"] for e in body["errors"]] == [status]
    return body["errors"][0]["message"]


def openai_error(r, status):
    err = r.json()["error"]
    assert r.status_code == status and set(err) == {"message", "type", "param", "code"}
    return err
