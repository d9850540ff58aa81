"""The gate under hostile clients (issue 20): real server processes on loopback ports, raw sockets
for the slow and the many, psutil for the server's memory. Every loop is bounded in count and time."""
import http.client
import json
import socket
import threading
import time

import psutil
import pytest
import requests

from .serving import KEY, RUN, Served, openai_error, run_error

pytestmark = pytest.mark.quick  # needs the serve extra and its clients, no torch

ORIGIN = "http://app.example"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, minilm_path):
    """A key, 16 connections at most, 1 s to send a body, CORS for one origin."""
    with Served(tmp_path_factory.mktemp("guarded"), minilm_path, "--api-key", KEY, "--max-connections", "16",
                "--body-timeout", "1", "--cors-allow-origin", ORIGIN) as s:
        yield s


def raw_request(path, body=b"", headers=(), declared=None) -> bytes:
    """An HTTP/1.1 POST's head and body as bytes; `declared` overrides the Content-Length."""
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body) if declared is None else declared}",
             *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_response(sock, timeout: float) -> tuple[int, dict, bytes]:
    """One response from a raw socket (status, lower-case headers, body), read within `timeout` s."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def test_unauthenticated_bodies_are_never_read(tmp_path, minilm_path):
    """150 callers without the key, each declaring and sending 1.9 MB at once: each gets its 401 as
    soon as its headers arrive, and the server's memory grows by a few MB, not by their 285 MB."""
    with Served(tmp_path, minilm_path, "--api-key", KEY) as srv:
        proc = psutil.Process(srv.proc.pid)
        base = proc.memory_info().rss
        peak = [base]
        done = threading.Event()

        def sample():
            while not done.wait(0.05):
                peak[0] = max(peak[0], proc.memory_info().rss)
        sampler = threading.Thread(target=sample)
        sampler.start()
        body = b"x" * 1_900_000
        socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=30) for _ in range(150)]
        statuses, errors = [], []

        def attack(group):
            for s in group:
                try:
                    s.sendall(raw_request("/v1/embeddings", body))
                except OSError as e:  # a reset is acceptable for the attacker; a success is not
                    errors.append(e)
            for s in group:
                try:
                    statuses.append(read_response(s, 30)[0])
                except (OSError, AssertionError) as e:
                    errors.append(e)
        try:
            threads = [threading.Thread(target=attack, args=(socks[i::6],)) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            time.sleep(0.5)
        finally:
            done.set()
            sampler.join(10)
            for s in socks:
                s.close()
        assert statuses and set(statuses) == {401}, (set(statuses), errors[:3])
        grown = (peak[0] - base) / 1e6
        assert grown < 60, f"the server grew by {grown:.0f} MB"
        assert requests.post(srv.base + "/v1/embeddings", json={"input": "still here"},  # and it still serves
                             headers={"Authorization": f"Bearer {KEY}"}, timeout=60).status_code == 200


@pytest.mark.parametrize("path, errors", [(RUN + "model", "run"), ("/v1/embeddings", "openai")])
def test_a_stalled_body_is_cut_at_the_deadline(guarded, path, errors):
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as s:
        s.sendall(raw_request(path, b'{"text": "ab', [f"Authorization: Bearer {KEY}"], declared=100))
        t0 = time.monotonic()
        status, headers, body = read_response(s, 10)
        waited = time.monotonic() - t0
        assert status == 408 and 0.9 < waited < 5 and headers["connection"] == "close"
        assert s.recv(1) == b""  # closed: the rest of that body will never be read
    response = requests.Response()
    response.status_code, response._content = status, body
    message = run_error(response, 408) if errors == "run" else openai_error(response, 408)["message"]
    assert "--body-timeout" in message


def test_connections_are_capped(guarded):
    """16 connections open (--max-connections 16), idle in keep-alive after a request each: the 17th
    gets a 503 at once, in the route's format and with Retry-After; once they close, requests are
    served again."""
    idle = [socket.create_connection(("127.0.0.1", guarded.port), timeout=10) for _ in range(16)]
    try:
        for s in idle:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(s, 10)[0] == 200
        r = requests.post(guarded.base + "/v1/embeddings", json={"input": "x"},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        err = openai_error(r, 503)
        assert "--max-connections" in err["message"] and r.headers["Retry-After"] == "1"
        assert "x-request-id" in r.headers
        r = requests.post(guarded.base + RUN + "model", json={"text": "x"},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        assert "too many connections" in run_error(r, 503)
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = guarded.post(RUN + "model", {"text": "x"})
        if r.status_code == 200:
            break
        time.sleep(0.2)
    assert r.status_code == 200


def test_a_silent_connection_is_closed(guarded):
    """A connection that sends no request (or half a request head) is closed after --body-timeout
    (1 s here), so silent sockets cannot hold the --max-connections slots."""
    silent = socket.create_connection(("127.0.0.1", guarded.port), timeout=10)
    half = socket.create_connection(("127.0.0.1", guarded.port), timeout=10)
    half.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthor")
    try:
        t0 = time.monotonic()
        for s in (silent, half):
            assert s.recv(1) == b""  # closed by the server (a timeout here raises)
        assert time.monotonic() - t0 < 5
    finally:
        silent.close()
        half.close()


NESTED = "[" * 100_000 + "]" * 100_000


def test_deep_json_is_a_400_and_the_connection_lives(guarded):
    conn = http.client.HTTPConnection("127.0.0.1", guarded.port, timeout=30)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    try:
        for path, body in [(RUN + "model", '{"text": ' + NESTED + "}"), ("/v1/embeddings", NESTED)]:
            conn.request("POST", path, body, headers)
            r = conn.getresponse()
            sock = conn.sock
            out = json.loads(r.read())
            assert r.status == 400, out
            message = out["error"]["message"] if "error" in out else out["errors"][0]["message"]
            assert "nested too deeply" in message
            conn.request("POST", "/v1/embeddings", json.dumps({"input": "hi"}), headers)
            ok = conn.getresponse()
            assert ok.status == 200 and json.loads(ok.read())["data"]
            assert conn.sock is sock  # the same keep-alive connection
    finally:
        conn.close()


def test_request_ids(guarded):
    answers = [guarded.post("/v1/embeddings", {"input": "a"}), guarded.post("/v1/embeddings", {"input": "a"}, key=None),
               guarded.post("/nowhere", {}), guarded.get("/health", key=None), guarded.get("/info")]
    assert [a.status_code for a in answers] == [200, 401, 404, 200, 200]
    ids = [a.headers["x-request-id"] for a in answers]
    assert len(set(ids)) == len(ids) and all(len(i) == 32 for i in ids)  # generated, one each
    given = requests.get(guarded.base + "/info", headers={"x-request-id": "trace-42.a:b",
                                                          "Authorization": f"Bearer {KEY}"}, timeout=30)
    assert given.headers["x-request-id"] == "trace-42.a:b"  # echoed
    dirty = requests.get(guarded.base + "/info", headers={"x-request-id": 'a b"<c>;' + "d" * 500}, timeout=30)
    assert dirty.status_code == 401 and dirty.headers["x-request-id"] == "abc" + "d" * 125  # cleaned, cut to 128


def test_cors(guarded):
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    r = requests.options(guarded.base + "/v1/embeddings", headers=preflight, timeout=30)  # no key: browsers send none
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower() and "x-request-id" in r.headers
    post = requests.post(guarded.base + "/v1/embeddings", json={"input": "hi"},
                         headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"}, timeout=30)
    assert post.status_code == 200 and post.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in post.headers["access-control-expose-headers"]
    denied = requests.post(guarded.base + "/v1/embeddings", json={"input": "hi"},  # an error is readable too
                           headers={"Origin": ORIGIN}, timeout=30)
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == ORIGIN
    other = requests.options(guarded.base + "/v1/embeddings", headers={**preflight, "Origin": "http://evil.example"},
                             timeout=30)
    assert "access-control-allow-origin" not in other.headers
