"""`bge-ref serve` as clients see it: a real server process on a free loopback port with the real
all-MiniLM-L6-v2, driven by the model page's own curl and Python snippets, the official openai
client, raw sockets and many threads. Answers are checked against encode() in this process."""
import ast
import base64
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests

from .conftest import subprocess_env
from .serving import ENV_KEY, HOSTED, KEY, MORE, NAMED, NAMES, RUN, Served, openai_error, run_error  # test_readme imports some from here

pytestmark = pytest.mark.quick  # needs the serve extra and its clients, no torch

STORIES = ["This is a story about an orange cloud", "This is a story about a llama",
           "This is a story about a hugging emoji"]
LONG = [f"{i} " + "a long input that is truncated to the model's 256 tokens " * 40 for i in range(100)]

# The model page's snippets, verbatim but for the URL (and the token, from the environment).
CURL = """curl {base}/client/v4/accounts/$CLOUDFLARE_ACCOUNT_ID/ai/run/@cf/baai/bge-large-en-v1.5 \\
  -X POST \\
  -H "Authorization: Bearer $CLOUDFLARE_API_TOKEN" \\
  -d '{{ "text": ["This is a story about an orange cloud", "This is a story about a llama", "This is a story about a hugging emoji"] }}'
"""
PYTHON = """import os
import requests

ACCOUNT_ID = "your-account-id"
AUTH_TOKEN = os.environ.get("CLOUDFLARE_AUTH_TOKEN")

stories = [
  'This is a story about an orange cloud',
  'This is a story about a llama',
  'This is a story about a hugging emoji'
]

response = requests.post(
  f"{base}/client/v4/accounts/{{ACCOUNT_ID}}/ai/run/@cf/baai/bge-large-en-v1.5",
  headers={{"Authorization": f"Bearer {{AUTH_TOKEN}}"}},
  json={{"text": stories}}
)

print(response.json())
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory, minilm_path):
    with Served(tmp_path_factory.mktemp("srv"), minilm_path, "--api-key", KEY, *NAMED) as s:
        yield s


@pytest.fixture(scope="module")
def small(tmp_path_factory, minilm_path):
    """Key from $BGE_REF_API_KEY, default served names, 2 requests in flight at most, no truncation."""
    with Served(tmp_path_factory.mktemp("small"), minilm_path, "--max-concurrent-requests", "2", "--no-truncate",
                env={"BGE_REF_API_KEY": ENV_KEY}) as s:
        yield s




def test_model_page_curl(srv, minilm):
    out = subprocess.run(["bash", "-c", CURL.format(base=srv.base)], capture_output=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "CLOUDFLARE_ACCOUNT_ID": "0123abc", "CLOUDFLARE_API_TOKEN": KEY})
    body = json.loads(out.stdout)  # curl labels -d bodies application/x-www-form-urlencoded: read as JSON anyway
    assert body["success"] is True and body["errors"] == [] and body["messages"] == []
    assert body["result"]["shape"] == [3, 384] and body["result"]["pooling"] == "mean"
    np.testing.assert_allclose(body["result"]["data"], minilm.encode(STORIES, pooling="mean"), atol=1e-5)


def test_model_page_python(srv, minilm):
    out = subprocess.run([sys.executable, "-c", PYTHON.format(base=srv.base)], capture_output=True, timeout=60,
                         env=subprocess_env(CLOUDFLARE_AUTH_TOKEN=KEY))
    assert out.returncode == 0, out.stderr
    body = ast.literal_eval(out.stdout.decode())  # the snippet prints the dict
    assert body["success"] is True and body["result"]["shape"] == [3, 384]
    np.testing.assert_allclose(body["result"]["data"], minilm.encode(STORIES, pooling="mean"), atol=1e-5)


def test_run_requests_and_cls(srv, minilm):
    r = srv.post(RUN + "all-MiniLM-L6-v2", {"requests": [{"text": "a"}, {"text": MORE, "pooling": "cls"}]})
    assert r.status_code == 200
    a, b = r.json()["result"]["responses"]
    assert a["shape"] == [1, 384] and b["shape"] == [len(MORE), 384] and b["pooling"] == "cls"
    np.testing.assert_allclose(a["data"], minilm.encode(["a"], pooling="mean"), atol=1e-6)
    np.testing.assert_allclose(b["data"], minilm.encode(MORE, pooling="cls"), atol=1e-6)


@pytest.mark.parametrize("prefix", ["/v1", "/client/v4/accounts/acct/ai/v1"])
def test_openai_client(srv, minilm, prefix):
    import openai
    client = openai.OpenAI(base_url=srv.base + prefix, api_key=KEY, timeout=60, max_retries=0)
    ref = minilm.encode(MORE)
    tokens = sum(min(n, minilm.max_length) for n in minilm.count_tokens(MORE))
    raw = client.embeddings.with_raw_response.create(model="all-MiniLM-L6-v2", input=MORE)
    assert isinstance(raw.http_response.json()["data"][0]["embedding"], str)  # the SDK asked for base64
    for out in (raw.parse(), client.embeddings.create(model="all-MiniLM-L6-v2", input=MORE, encoding_format="float")):
        assert out.model == "all-MiniLM-L6-v2" and [d.index for d in out.data] == list(range(len(MORE)))
        np.testing.assert_allclose([d.embedding for d in out.data], ref, atol=1e-6)
        assert out.usage.prompt_tokens == out.usage.total_tokens == tokens
    ids = srv.post(prefix + "/embeddings", {"input": [[7592, 2088]]}).json()  # no model: the first served name
    assert ids["model"] == NAMES[0] and ids["usage"]["prompt_tokens"] == 4
    np.testing.assert_allclose(ids["data"][0]["embedding"], minilm.encode("hello world"), atol=1e-6)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")


BIG = b'{"text": "' + b"x" * 2_000_001 + b'"}'


def short(value) -> str:
    """Test ids without the 2 MB body in them."""
    return "2MB-body" if value is BIG else repr(value)[:40].replace("[[[[", "")


@pytest.mark.parametrize("path, body, key, status, message", [
    (RUN + HOSTED, b"{not json", KEY, 400, "not valid JSON"),
    (RUN + HOSTED, {"text": 5}, KEY, 400, "inputs.text must be a str or a list of str"),
    (RUN + HOSTED, {"text": []}, KEY, 400, "between 1 and 100 strings allowed, got 0"),
    (RUN + HOSTED, {"text": ["x"] * 101}, KEY, 400, "between 1 and 100 strings allowed, got 101"),
    (RUN + HOSTED, {"text": ["a", ""]}, KEY, 400, "inputs.text[1]: empty string"),
    (RUN + HOSTED, {"requests": [{"text": ["x"] * 60}, {"text": ["y"] * 41}]}, KEY, 400, "more than 100 texts in all"),
    (RUN + HOSTED, {"requests": [{"text": "x"}] * 5000}, KEY, 400, "more than 100 texts in all (in 5000 entries)"),
    (RUN + HOSTED, b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", KEY, 400, "nested too deeply"),
    (RUN + HOSTED, {"text": "a", "top_k": 1}, KEY, 400, "unknown field(s) ['top_k']"),
    (RUN + "@cf/baai/bge-m3", {"text": "a"}, KEY, 404, "no such model '@cf/baai/bge-m3'"),
    (RUN + HOSTED, {"text": "a"}, None, 401, "missing or wrong API key"),
    (RUN + HOSTED, {"text": "a"}, "wrong", 401, "missing or wrong API key"),
    (RUN + HOSTED, BIG, KEY, 413, "the limit is 2000000"),
    (RUN + "@cf/unknown", BIG, None, 401, "missing or wrong"),      # 401 before 413: the body is never read
    (RUN + "@cf/unknown", b"{not json", "wrong", 401, "missing or wrong"),  # 401 before 404
    (RUN + "@cf/unknown", b"{not json", KEY, 404, "no such model"),       # 404 before 400
    ("/nowhere", {}, KEY, 404, "no route /nowhere"),
    ("/nowhere", {}, None, 401, "missing or wrong"),  # no route is revealed without the key either
], ids=short)
def test_run_errors(srv, path, body, key, status, message):
    assert message in run_error(srv.post(path, body, key=key), status)


@pytest.mark.parametrize("body, key, status, param, code, message", [
    (b"[1, 2", KEY, 400, None, None, "not valid JSON"),
    ({"input": 5}, KEY, 400, "input", None, "input must be a str"),
    ({"input": []}, KEY, 400, "input", None, "empty list"),
    ({"input": ["x"] * 2049}, KEY, 400, "input", None, "at most 2048 inputs"),
    ({"input": ["a", ""]}, KEY, 400, "input", None, "input[1]: empty string"),
    ({"input": "a", "top_k": 1}, KEY, 400, "top_k", None, "unknown field(s) ['top_k']"),
    ({"input": [[7592, 2088], [30522]]}, KEY, 400, "input", None, "input[1][0]: token id 30522 is out of range"),
    ({"input": [-1]}, KEY, 400, "input", None, "input[0]: token id -1 is out of range"),
    ({"input": [15339, 1917, 13]}, KEY, 400, "input", None, "input[2]: token id 13 is an [unused] token"),  # tiktoken's
    ({"input": [[7592], [1, 2]]}, KEY, 400, "input", None, "look like another tokenizer's ids"),
    ({"input": [[7592], [998]]}, KEY, 400, "input", None, "check_embedding_ctx_length=False"),  # [unused993]: the last
    ({"input": "a", "dimensions": 128}, KEY, 400, "dimensions", None, "absent or 384"),
    ({"input": "a", "encoding_format": "int8"}, KEY, 400, "encoding_format", None, "'float' or 'base64'"),
    ({"input": "a", "model": "gpt"}, KEY, 404, "model", "model_not_found", "model 'gpt' does not exist"),
    ({"input": "a", "model": "gpt", "x": 1}, KEY, 404, "model", "model_not_found", "does not exist"),  # 404 first
    ({"input": "a"}, None, 401, None, "invalid_api_key", "missing or wrong API key"),
    ({"input": "a", "model": "gpt"}, "wrong", 401, None, "invalid_api_key", "missing or wrong"),  # 401 first
    (BIG, "wrong", 401, None, "invalid_api_key", "missing or wrong"),  # 401 first: the body is never read
    (BIG, KEY, 413, None, "payload_too_large", "the limit is 2000000"),
], ids=short)
def test_openai_errors(srv, body, key, status, param, code, message):
    err = openai_error(srv.post("/v1/embeddings", body, key=key), status)
    assert message in err["message"] and err["param"] == param and err["code"] == code
    assert err["type"] == "invalid_request_error"


def test_wrong_method_and_chunked_oversized_body(srv):
    r = requests.get(srv.base + "/v1/embeddings", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert "GET is not allowed" in openai_error(r, 405)["message"]
    chunks = (b"x" * 100_000 for _ in range(25))  # no Content-Length: counted while read
    r = requests.post(srv.base + RUN + HOSTED, data=chunks, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert "more than 2000000" in run_error(r, 413)


def test_info_tokenize_metrics(srv, minilm_path):
    assert srv.get("/info", key=None).status_code == 401 and srv.get("/health", key=None).status_code == 200
    info = srv.get("/info").json()
    assert info["served_model_names"] == NAMES and info["hidden_size"] == 384 and info["num_hidden_layers"] == 6
    assert info["max_input_tokens"] == 256 and info["pooling"] == "mean" and info["truncate"] is True
    assert info["limits"] == {"max_batch_tokens": 16384, "max_batch_size": 32, "max_concurrent_requests": 512,
                              "max_connections": 1024, "max_body_bytes": 2_000_000, "body_timeout_seconds": 10.0,
                              "max_texts_per_run_request": 100, "max_openai_inputs": 2048}
    from tokenizers import Tokenizer
    hf = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    hf.no_padding()
    hf.enable_truncation(256)
    out = srv.post("/tokenize", {"text": MORE}).json()
    assert out["max_input_tokens"] == 256 and len(out["tokens"]) == len(MORE)
    for text, t in zip(MORE, out["tokens"]):
        ref = hf.encode(text)
        assert t["ids"] == ref.ids and t["tokens"] == ref.tokens and t["count"] == len(ref.ids)
        assert t["truncated"] == (text == MORE[-3])  # the long one
    assert srv.post("/tokenize", {"text": "hi"}).json()["tokens"][0]["tokens"] == ["[CLS]", "hi", "[SEP]"]
    assert "text" in run_error(srv.post("/tokenize", {"txt": "hi"}), 400)
    m = srv.metrics()
    assert m[("bge_ref_requests_total", (("route", "tokenize"), ("status", "200")))] >= 2
    assert m[("bge_ref_batch_size_count", ())] >= 1 and m[("bge_ref_request_seconds_count", (("route", "run"),))] >= 1
    assert m[("bge_ref_texts_embedded_total", ())] >= 1 and m[("bge_ref_tokens_embedded_total", ())] >= 3


@pytest.mark.slow
def test_health_answers_and_a_gone_client_is_not_computed(srv, minilm):
    """While 100 long texts compute: /health answers within 0.5 s, and a client that leaves with its
    50 texts queued gets them dropped, not computed."""
    before = srv.metrics()
    embedded0 = before[("bge_ref_texts_embedded_total", ())]
    dropped0 = before[("bge_ref_texts_dropped_total", ())]
    started0 = before.get(("bge_ref_queue_seconds_count", ()), 0)
    answer = {}
    long_request = threading.Thread(target=lambda: answer.update(r=srv.post(RUN + HOSTED, {"text": LONG}, timeout=300)))
    long_request.start()
    try:
        srv.wait_metric("bge_ref_queue_seconds_count", lambda v: v > started0)  # its first batch computes
        for _ in range(5):
            t = time.monotonic()
            assert requests.get(srv.base + "/health", timeout=5).status_code == 200
            assert time.monotonic() - t < 0.5
        body = json.dumps({"text": [f"gone {i}" for i in range(50)]}).encode()
        gone = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        gone.sendall(b"POST " + (RUN + HOSTED).encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        srv.wait_metric("bge_ref_requests_in_flight", lambda v: v == 2)
        time.sleep(0.3)  # parsed and queued behind the long request
        gone.close()
        srv.wait_metric("bge_ref_texts_dropped_total", lambda v: v == dropped0 + 50)
    finally:
        long_request.join(300)
    r = answer["r"]
    assert r.status_code == 200 and r.json()["result"]["shape"] == [100, 384]
    some = [0, 1, 37, 98, 99]  # a sample (encode() of all 100 here would double the test's time)
    np.testing.assert_allclose(np.array(r.json()["result"]["data"])[some],
                               minilm.encode([LONG[i] for i in some], pooling="mean"), atol=1e-5)
    after = srv.metrics()
    assert after[("bge_ref_texts_embedded_total", ())] == embedded0 + 100  # the 50 were never computed
    assert after[("bge_ref_requests_total", (("route", "run"), ("status", "499")))] >= 1


@pytest.mark.slow
def test_load_24_clients(srv, minilm):
    """24 clients, 4 requests each, mixed routes, sizes and poolings: every answer is the right one."""
    pool = [f"text {i}: " + " ".join(["word"] * (i % 37)) + f" ends {i}" for i in range(120)]
    ref = {"mean": minilm.encode(pool, pooling="mean"), "cls": minilm.encode(pool, pooling="cls")}
    failures, answered = [], []

    def client(seed):
        rng = random.Random(seed)
        for n in range(4):
            idx = rng.sample(range(len(pool)), rng.randint(1, 8))
            texts = [pool[i] for i in idx]
            try:
                if n % 2:
                    r = srv.post("/v1/embeddings", {"input": texts, "encoding_format": "base64"}, timeout=120)
                    got = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in r.json()["data"]]
                    want = ref["mean"][idx]  # the checkpoint's pooling
                else:
                    pooling = rng.choice(["mean", "cls"])
                    r = srv.post(RUN + HOSTED, {"text": texts, "pooling": pooling}, timeout=120)
                    got, want = r.json()["result"]["data"], ref[pooling][idx]
                assert r.status_code == 200
                np.testing.assert_allclose(got, want, atol=1e-5)
                answered.append(len(texts))
            except Exception as e:  # noqa: BLE001 - collected and reported below
                failures.append(f"client {seed} request {n}: {e!r}")

    embedded0 = srv.metrics()[("bge_ref_texts_embedded_total", ())]
    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures, failures[:3]
    assert len(answered) == 24 * 4
    assert srv.metrics()[("bge_ref_texts_embedded_total", ())] == embedded0 + sum(answered)  # each computed once


def test_env_key_default_names_and_no_truncate(small, minilm):
    ok = small.post(RUN + "model", {"text": "hi"}, key=ENV_KEY)  # the directory's name is served
    assert ok.status_code == 200
    np.testing.assert_allclose(ok.json()["result"]["data"], minilm.encode(["hi"], pooling="mean"), atol=1e-6)
    assert small.post(RUN + "model", {"text": "hi"}, key=KEY).status_code == 401
    assert "no such model" in run_error(small.post(RUN + HOSTED, {"text": "hi"}, key=ENV_KEY), 404)
    assert small.get("/info", key=ENV_KEY).json()["served_model_names"] == ["model"]
    message = run_error(small.post(RUN + "model", {"text": ["ok", LONG[0]]}, key=ENV_KEY), 400)
    assert "inputs.text[1] has" in message and "more than the model's 256" in message
    err = openai_error(small.post("/v1/embeddings", {"input": [[2088] * 10, [2088] * 255]}, key=ENV_KEY), 400)
    assert "input[1] has 257 tokens" in err["message"] and err["param"] == "input"


@pytest.mark.slow
def test_overload_then_sigterm_drains(small, minilm):
    """Two long requests fill --max-concurrent-requests 2: a third is a 429 at once, on each route in
    its own format. Then SIGTERM while they compute: both still get their 200, and the exit is 0."""
    texts = [t[:900] for t in LONG[:40]]  # just under 256 tokens: --no-truncate accepts them
    answers = []
    busy = [threading.Thread(target=lambda: answers.append(small.post(RUN + "model", {"text": texts},
                                                                       key=ENV_KEY, timeout=300)))
            for _ in range(2)]
    for t in busy:
        t.start()
    try:
        small.wait_metric("bge_ref_requests_in_flight", lambda v: v == 2, key=ENV_KEY)
        t0 = time.monotonic()
        r = small.post(RUN + "model", {"text": "x"}, key=ENV_KEY)
        assert "overloaded" in run_error(r, 429) and r.headers["Retry-After"] == "1" and r.headers["x-request-id"]
        o = small.post("/v1/embeddings", {"input": "x"}, key=ENV_KEY)
        err = openai_error(o, 429)
        assert err["type"] == "rate_limit_error" and o.headers["Retry-After"] == "1"
        assert time.monotonic() - t0 < 2  # at once, not queued
        assert small.get("/health", key=None).status_code == 200  # not limited
        small.proc.send_signal(signal.SIGTERM)
        assert small.proc.wait(120) == 0
    finally:
        for t in busy:
            t.join(300)
    assert [a.status_code for a in answers] == [200, 200]
    some = [0, 17, 39]  # a sample: encode() of all here would add to the test's time
    ref = minilm.encode([texts[i] for i in some], pooling="mean")
    for a in answers:
        assert a.json()["result"]["shape"] == [40, 384]
        np.testing.assert_allclose(np.array(a.json()["result"]["data"])[some], ref, atol=1e-5)


@pytest.mark.parametrize("prefix", ["/v1", "/client/v4/accounts/acct/ai/v1"])
def test_models(srv, prefix):
    import openai
    client = openai.OpenAI(base_url=srv.base + prefix, api_key=KEY, timeout=60, max_retries=0)
    assert [m.id for m in client.models.list()] == NAMES
    for name in NAMES:
        m = client.models.retrieve(name)
        assert m.id == name and m.object == "model" and m.owned_by == "bge-ref" and m.created > 0
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.base + prefix, api_key="wrong", max_retries=0).models.list()


def test_no_cors_by_default(srv):
    r = requests.options(srv.base + "/v1/embeddings", timeout=30, headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code in (401, 405) and "access-control-allow-origin" not in r.headers
    r = srv.post("/v1/embeddings", {"input": "hi"}, headers={"Origin": "http://app.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_a_non_finite_vector_is_a_500(tmp_path, minilm_path):
    """A checkpoint whose attention scores overflow float32 (query and key weights x 1e20 in layer 0:
    finite weights, so it loads) computes NaN: each route answers 500 in its own format, never 200."""
    from safetensors.numpy import load_file, save_file
    broken = tmp_path / "broken"
    shutil.copytree(minilm_path, broken)
    weights = load_file(broken / "model.safetensors")
    for kind in ("query", "key"):
        name = next(n for n in weights if f"layer.0.attention.self.{kind}.weight" in n)
        weights[name] = weights[name] * np.float32(1e20)
    save_file(weights, broken / "model.safetensors")
    with Served(tmp_path, broken, "--api-key", KEY) as s:
        message = run_error(s.post(RUN + "broken", {"text": ["a", "b"]}), 500)
        assert "NumericalError" in message and "inputs.text[0]" in message and "non-finite" in message
        err = openai_error(s.post("/v1/embeddings", {"input": "a"}), 500)
        assert err["type"] == "server_error" and "non-finite" in err["message"]
        assert s.get("/health", key=None).status_code == 200  # and it keeps serving
