"""`bge-ref serve`: the hosted API's REST route and OpenAI's /v1/embeddings over HTTP.

    POST /client/v4/accounts/{account_id}/ai/run/{model}   the model page's route, run()'s schema
    POST /v1/embeddings, /client/v4/accounts/{account_id}/ai/v1/embeddings   OpenAI's schema
    GET /health, GET /info, POST /tokenize, GET /metrics (Prometheus text)

Starlette on uvicorn (the `serve` extra). How a request travels:
- the Gate (an ASGI middleware) reads the body, at most --max-body-bytes of it (413), checks the key
  (401) and the requests in flight (429), so a wrong key never reaches the routing that would tell
  which model names exist (404); the route then parses the JSON and checks every field (400);
- one worker thread owns the model: it tokenizes, merges the texts of all waiting requests into
  length-sorted batches of at most --max-batch-size texts and --max-batch-tokens padded tokens
  (batch x longest text), as encode() batches them, computes, and hands
  each request its own rows back; a request whose client has left is dropped before it is computed;
- the event loop only parses, routes and waits: it never runs NumPy (responses are rendered to JSON
  in a thread of Starlette's pool).
SIGTERM or SIGINT: /health turns 503, no new connection is accepted, the requests in flight are
answered, and the process exits 0.
"""
from __future__ import annotations

import asyncio
import bisect
import hmac
import ipaddress
import json
import math
import queue
import re
import sys
import threading
import time
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from dataclasses import dataclass

from . import api
from .errors import BgeRefError, InputError

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response
    from starlette.routing import Route
except ImportError as e:
    raise BgeRefError(f"bge-ref serve needs the serve extra ({e.name} is not installed): "
                      'pip install "bge-ref[serve]"') from None

BGE_LARGE_HUB_ID = "BAAI/bge-large-en-v1.5"
HOSTED_NAME = "@cf/baai/bge-large-en-v1.5"  # the hosted API's name for it
RETRY_AFTER = "1"  # seconds, with every 429
LIMITED_ROUTES = ("run", "openai", "tokenize", "attention")  # the routes that count toward --max-concurrent-requests


@dataclass
class Settings:
    served: list[str]
    api_key: str | None = None
    max_batch_tokens: int = 16384
    max_batch_size: int = 32  # texts per batch, as encode()'s batch_size: larger batches run slower here
    max_concurrent_requests: int = 512
    max_body_bytes: int = 2_000_000
    truncate: bool = True


def served_names(model_arg: str | None, resolved: str) -> list[str]:
    """The checkpoint's hub id or directory name, plus the hosted API's name for bge-large-en-v1.5."""
    from pathlib import Path
    arg = model_arg or resolved
    name = arg if not Path(arg).expanduser().is_dir() else Path(arg).expanduser().resolve().name
    return [name, HOSTED_NAME] if name == BGE_LARGE_HUB_ID else [name]


# -- metrics (Prometheus text format) -------------------------------------------------------------
class Metrics:
    """Counters and histograms, updated from the event loop and the worker (hence the lock)."""
    BUCKETS = {
        "bge_ref_batch_size": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
        "bge_ref_queue_seconds": (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        "bge_ref_request_seconds": (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    }
    HELP = {
        "bge_ref_requests_total": ("counter", "HTTP requests answered, by route and status (499: the client left)"),
        "bge_ref_texts_embedded_total": ("counter", "texts (or token-id inputs) computed"),
        "bge_ref_tokens_embedded_total": ("counter", "tokens computed, [CLS] and [SEP] included, after truncation"),
        "bge_ref_texts_dropped_total": ("counter", "texts of requests whose client left, dropped before computing"),
        "bge_ref_compute_seconds_total": ("counter", "time the worker spent computing batches (its busy time)"),
        "bge_ref_requests_in_flight": ("gauge", "requests admitted and not yet answered"),
        "bge_ref_batch_size": ("histogram", "texts per computed batch"),
        "bge_ref_queue_seconds": ("histogram", "from a request's arrival at the worker to its first batch"),
        "bge_ref_request_seconds": ("histogram", "request latency, by route"),
    }

    def __init__(self):
        self.lock = threading.Lock()
        self.values: dict[tuple, float] = {}              # (name, labels) -> value
        self.hists: dict[tuple, list] = {}                # (name, labels) -> [bucket counts..., sum, count]

    def add(self, name, value=1, **labels):
        key = (name, tuple(sorted(labels.items())))
        with self.lock:
            self.values[key] = self.values.get(key, 0) + value

    def observe(self, name, value, **labels):
        key, bounds = (name, tuple(sorted(labels.items()))), self.BUCKETS[name]
        with self.lock:
            h = self.hists.setdefault(key, [0] * (len(bounds) + 3))
            h[bisect.bisect_left(bounds, value)] += 1     # the first bucket whose bound is >= value
            h[-2] += value
            h[-1] += 1

    def render(self) -> str:
        def fmt(labels):
            return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else ""
        lines = []
        with self.lock:
            for name, (kind, text) in self.HELP.items():
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if kind != "histogram":
                    rows = sorted((k[1], v) for k, v in self.values.items() if k[0] == name) or [((), 0)]
                    lines += [f"{name}{fmt(labels)} {v:g}" for labels, v in rows]
                    continue
                for (n, labels), h in sorted(self.hists.items()):
                    if n != name:
                        continue
                    bounds, total = self.BUCKETS[name], 0
                    for bound, count in zip([*bounds, math.inf], h):
                        total += count
                        le = "+Inf" if bound == math.inf else f"{bound:g}"
                        lines.append(f"{name}_bucket{fmt((*labels, ('le', le)))} {total}")
                    lines += [f"{name}_sum{fmt(labels)} {h[-2]:g}", f"{name}_count{fmt(labels)} {h[-1]}"]
        return "\n".join(lines) + "\n"


# -- the worker: one thread owns the model ----------------------------------------------------------
class Job:
    """One request's groups of texts; the worker fills `vectors` and resolves `future`."""

    def __init__(self, groups: list[api.Group], truncate: bool):
        self.groups, self.truncate = groups, truncate
        self.future: Future = Future()
        self.arrived = time.monotonic()
        self.vectors: list = []
        self.tokens = self.remaining = 0
        self.started = False


@dataclass
class Row:
    job: Job
    group: int
    index: int
    tokens: object  # an encoding: .ids, .attention_mask, .type_ids


class Worker(threading.Thread):
    """Takes jobs from a queue and computes their rows in shared batches.

    Batching goes in rounds: the rows waiting when a round starts are sorted by length (as encode()
    sorts a chunk) and cut into batches of at most max_batch_size rows and max_batch_tokens padded
    tokens (bigger batches than encode()'s 32 texts compute slower per token on CPU: a 256-text MiniLM
    corpus took 1.8x as long in batches of ~16k tokens as in batches of 32 texts); rows arriving
    meanwhile wait for the next round, so a long text is never starved by a stream of short ones.
    A round's last batch, when not full, is filled up with the next round's shortest rows: the fast
    path computes real tokens only, so rows of any lengths share a batch at no padding cost.
    Before each batch, rows of requests whose client has left are dropped."""

    def __init__(self, model, max_batch_tokens: int, max_batch_size: int, metrics: Metrics):
        super().__init__(name="bge-ref-worker", daemon=True)
        self.model, self.metrics = model, metrics
        self.max_batch_tokens, self.max_batch_size = max_batch_tokens, max_batch_size
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, job) -> asyncio.Future:
        """Queue a Job, or a callable run with the model between batches; await the answer."""
        if not callable(job):
            self.inbox.put(job)
            return asyncio.wrap_future(job.future)
        future = Future()
        self.inbox.put((job, future))
        return asyncio.wrap_future(future)

    def stop(self, timeout=30.0):
        self.inbox.put(None)
        self.join(timeout)

    def run(self):
        waiting: list[Row] = []   # rows for the next round
        current: list[Row] = []   # this round's rows, shortest first
        while True:
            items = []
            try:  # block only when there is nothing to compute
                items.append(self.inbox.get(block=not (waiting or current)))
                while True:
                    items.append(self.inbox.get_nowait())
            except queue.Empty:
                pass
            for item in items:
                if item is None:
                    return  # stop() comes after the server has answered every request
                if isinstance(item, tuple):
                    _resolve(item[1], lambda: item[0](self.model))
                else:
                    waiting += self._rows(item)
            waiting, current = self._drop_gone(waiting), self._drop_gone(current)
            if not current:
                current, waiting = sorted(waiting, key=lambda r: len(r.tokens.ids)), []
            if current:
                n = self._fit([], current)
                batch, current = current[:n], current[n:]
                if not current and waiting:  # the round's last batch: fill it up from the next round's
                    waiting.sort(key=lambda r: len(r.tokens.ids))  # shortest rows (the fast path computes
                    k = self._fit(batch, waiting)                  # real tokens only: mixing costs nothing)
                    batch, waiting = batch + waiting[:k], waiting[k:]
                self._compute(batch)

    def _rows(self, job: Job) -> list[Row]:
        """Tokenize a job's groups (a --no-truncate length error fails the job, naming the text)."""
        rows = []
        try:
            for g, group in enumerate(job.groups):
                enc = api.tokenize(self.model, group, job.truncate)
                rows += [Row(job, g, i, e) for i, e in enumerate(enc)]
        except Exception as e:
            _fail(job.future, e)
            return []
        job.remaining = len(rows)
        job.vectors = [[None] * len(g.items) for g in job.groups]
        return rows

    def _drop_gone(self, rows: list[Row]) -> list[Row]:
        kept = [r for r in rows if not r.job.future.cancelled()]
        if len(kept) < len(rows):
            self.metrics.add("bge_ref_texts_dropped_total", len(rows) - len(kept))
        return kept

    def _fit(self, batch: list[Row], rows: list[Row]) -> int:
        """How many of the (ascending) rows can join the batch within max_batch_size rows and
        max_batch_tokens padded to the longest; a new batch (empty) takes at least one."""
        longest, k = max((len(r.tokens.ids) for r in batch), default=0), 0 if batch else 1
        while (len(batch) + k < self.max_batch_size and k < len(rows)
               and (len(batch) + k + 1) * max(longest, len(rows[k].tokens.ids)) <= self.max_batch_tokens):
            k += 1
        return k

    def _compute(self, batch: list[Row]):
        now = time.monotonic()
        for r in batch:
            if not r.job.started:
                r.job.started = True
                self.metrics.observe("bge_ref_queue_seconds", now - r.job.arrived)
        try:
            vectors = api.embed_batch(self.model, [r.tokens for r in batch],
                                      [r.job.groups[r.group].pooling for r in batch])  # (B, D)
        except Exception as e:  # a bug, not bad input: fail these requests, keep serving
            for job in {id(r.job): r.job for r in batch}.values():
                _fail(job.future, e)
            return
        self.metrics.add("bge_ref_compute_seconds_total", time.monotonic() - now)
        tokens = sum(len(r.tokens.ids) for r in batch)
        self.metrics.observe("bge_ref_batch_size", len(batch))
        self.metrics.add("bge_ref_texts_embedded_total", len(batch))
        self.metrics.add("bge_ref_tokens_embedded_total", tokens)
        for r, v in zip(batch, vectors):
            job = r.job
            job.vectors[r.group][r.index] = v
            job.tokens += len(r.tokens.ids)
            job.remaining -= 1
            if job.remaining == 0:
                _resolve(job.future, lambda: ([_stack(g) for g in job.vectors], job.tokens))


def _stack(rows):
    import numpy as np
    return np.stack(rows)  # (n, D), in the group's order


def _resolve(future: Future, fn):
    try:
        result = fn()
    except Exception as e:
        return _fail(future, e)
    try:
        future.set_result(result)
    except InvalidStateError:  # cancelled meanwhile: the client has left
        pass


def _fail(future: Future, e: BaseException):
    try:
        future.set_exception(e)
    except InvalidStateError:
        pass


# -- HTTP ----------------------------------------------------------------------------------------
class Reject(Exception):
    """An HTTP error answered in the route's own error format."""

    def __init__(self, status: int, message: str, param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
                500: "server_error", 503: "server_error"}
OPENAI_CODES = {401: "invalid_api_key", 404: "not_found", 413: "payload_too_large", 429: "rate_limit_exceeded",
                503: "service_unavailable"}
RUN_PATH = re.compile(r"/client/v4/accounts/[^/]+/ai/run/.+")
OPENAI_PATH = re.compile(r"(/client/v4/accounts/[^/]+/ai)?/v1/embeddings")


def route_of(path: str) -> str:
    """The metrics label of a path; also picks the error format."""
    if OPENAI_PATH.fullmatch(path):
        return "openai"
    if RUN_PATH.fullmatch(path):
        return "run"
    if path == "/":
        return "playground"
    return path[1:] if path in ("/health", "/info", "/tokenize", "/metrics", "/attention") else "other"


def error_response(path: str, err: Reject) -> Response:
    """OpenAI's error body on OpenAI's paths; elsewhere the hosted API's envelope (code: the status)."""
    if route_of(path) == "openai" or path.startswith("/v1/") or "/ai/v1/" in path:
        body = {"error": {"message": err.message, "type": OPENAI_TYPES.get(err.status, "invalid_request_error"),
                          "param": err.param, "code": err.code or OPENAI_CODES.get(err.status)}}
    else:
        body = {"result": None, "success": False, "errors": [{"code": err.status, "message": err.message}],
                "messages": []}
    return json_response(body, err.status, err.headers)


def json_response(body, status=200, headers=None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status, headers, media_type="application/json")


class Gate:
    """ASGI middleware: body size (413), key (401), load (429), draining (503) before routing; and
    the request metrics. The body read here is replayed to the route."""

    def __init__(self, app, state: "Server"):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, route, start = scope["path"], route_of(scope["path"]), time.monotonic()
        status = [499]  # stays 499 if the client leaves before an answer

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        admitted = False
        try:
            try:
                body = await self._admit(scope, receive, route)
                admitted = route in LIMITED_ROUTES
            except Reject as err:
                return await error_response(path, err)(scope, receive, send_status)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # after the body: waits for the client to leave
            await self.app(scope, replay, send_status)
        finally:
            if admitted:
                self.state.in_flight -= 1
                self.state.metrics.add("bge_ref_requests_in_flight", -1)
            self.state.metrics.add("bge_ref_requests_total", route=route, status=status[0])
            self.state.metrics.observe("bge_ref_request_seconds", time.monotonic() - start, route=route)

    async def _admit(self, scope, receive, route) -> bytes:
        s = self.state.settings
        if self.state.draining and route != "health":
            raise Reject(503, "the server is shutting down; retry on another instance")
        body = await read_body(scope, receive, s.max_body_bytes)
        if s.api_key is not None and route not in ("health", "playground") and not authorized(scope, s.api_key):
            raise Reject(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")
        if route in LIMITED_ROUTES:
            if self.state.in_flight >= s.max_concurrent_requests:
                raise Reject(429, f"overloaded: {s.max_concurrent_requests} requests in flight; retry after "
                                  f"{RETRY_AFTER} s", headers={"Retry-After": RETRY_AFTER})
            self.state.in_flight += 1
            self.state.metrics.add("bge_ref_requests_in_flight", 1)
        return body


async def read_body(scope, receive, limit: int) -> bytes:
    """The request body, or a 413 once it passes `limit` bytes (by Content-Length before reading).
    An oversized body is still read and discarded, up to a bound, so the client gets the answer
    instead of a reset connection."""
    declared = dict(scope["headers"]).get(b"content-length")
    too_big = declared is not None and declared.isdigit() and int(declared) > limit
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Reject(499, "the client left")
        size += len(message.get("body", b""))
        if size > limit:
            too_big = True
        if not too_big:
            chunks.append(message.get("body", b""))
        if not message.get("more_body") or size > 16 * limit:
            break
    if too_big:
        raise Reject(413, f"the body has {declared.decode() if declared else 'more than ' + str(limit)} bytes; "
                          f"the limit is {limit} (--max-body-bytes)")
    return b"".join(chunks)


def authorized(scope, key: str) -> bool:
    header = dict(scope["headers"]).get(b"authorization", b"")
    scheme, _, token = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key.encode())  # constant time


def parse_json(body: bytes):
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise Reject(400, f"the body is not valid JSON: {e}") from None


class Server:
    """The app's state: model, settings, worker, metrics; and the routes."""

    def __init__(self, model, settings: Settings):
        self.model, self.settings = model, settings
        self.metrics = Metrics()
        self.worker = Worker(model, settings.max_batch_tokens, settings.max_batch_size, self.metrics)
        self.in_flight, self.draining = 0, False
        routes = [
            Route("/client/v4/accounts/{account_id}/ai/run/{model:path}", self.run, methods=["POST"]),
            Route("/v1/embeddings", self.openai, methods=["POST"]),
            Route("/client/v4/accounts/{account_id}/ai/v1/embeddings", self.openai, methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/info", self.info, methods=["GET"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/", self.playground, methods=["GET"]),
            Route("/attention", self.attention, methods=["POST"]),
        ]
        handlers = {Reject: self._reject, 404: self._http_error, 405: self._http_error, Exception: self._crash}
        self.app = Gate(Starlette(routes=routes, exception_handlers=handlers), self)

    # -- routes
    async def run(self, request):
        name = request.path_params["model"]
        if name not in self.settings.served:
            raise Reject(404, f"no such model {name!r}; this server serves {self.settings.served}")
        parsed = self._parsed(api.parse_run, parse_json(await request.body()))
        vectors, _ = await self._compute(request, parsed.groups)
        result = await run_in_threadpool(api.run_result, parsed, vectors)
        return await self._json({"result": result, "success": True, "errors": [], "messages": []})

    async def openai(self, request):
        m = self.model
        parsed = self._parsed(api.parse_openai, parse_json(await request.body()), pooling=m.pooling,
                              hidden_size=m.config.hidden_size, vocab_size=m.config.vocab_size,
                              served=self.settings.served)
        vectors, tokens = await self._compute(request, parsed.groups)
        return await self._json(await run_in_threadpool(api.openai_result, parsed, vectors[0], tokens))

    async def health(self, request):
        if self.draining or not self.worker.is_alive():
            raise Reject(503, "draining" if self.draining else "the worker thread has stopped")
        return json_response({"status": "ok"})

    async def info(self, request):
        c, s = self.model.config, self.settings
        from . import __version__
        return json_response({
            "served_model_names": s.served, "checkpoint": self.model.name, "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers, "max_input_tokens": self.model.max_length,
            "pooling": self.model.pooling, "dtype": str(self.model.dtype), "truncate": s.truncate,
            "limits": {"max_batch_tokens": s.max_batch_tokens, "max_batch_size": s.max_batch_size,
                       "max_concurrent_requests": s.max_concurrent_requests,
                       "max_body_bytes": s.max_body_bytes, "max_texts_per_run_request": api.API_MAX_TEXTS,
                       "max_openai_inputs": api.OPENAI_MAX_INPUTS},
            "version": __version__})

    async def tokenize(self, request):
        body = parse_json(await request.body())
        if not isinstance(body, dict) or set(body) != {"text"}:
            raise Reject(400, "the body must be {\"text\": str | [str]}", "text")
        texts = self._parsed(api.as_texts, body["text"], "text")
        if not 1 <= len(texts) <= api.OPENAI_MAX_INPUTS:
            raise Reject(400, f"text: between 1 and {api.OPENAI_MAX_INPUTS} strings allowed, got {len(texts)}", "text")
        truncate = self.settings.truncate

        def count(model):
            full = model.count_tokens(texts)
            enc = model.tokenizer.encode(texts, truncate=True)
            return [{"ids": e.ids, "tokens": e.tokens, "count": len(e.ids), "truncated": n > len(e.ids)}
                    for e, n in zip(enc, full)]
        results = await self.worker.submit(count)
        return json_response({"tokens": results, "max_input_tokens": self.model.max_length, "truncate": truncate})

    async def playground(self, request):
        return playground_page()

    async def attention(self, request):
        from . import inspect
        text, layer = self._parsed(inspect.parse_request, parse_json(await request.body()),
                                   self.model.config.num_hidden_layers)
        truncate = self.settings.truncate
        try:
            body = await self.worker.submit(lambda m: inspect.as_json(inspect.look_inside(m, text, layer, truncate)))
        except InputError as e:
            raise Reject(400, str(e), getattr(e, "param", None)) from None
        return await self._json(body)

    async def prometheus(self, request):
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    # -- helpers
    def _parsed(self, parse, *args, **kw):
        try:
            return parse(*args, **kw)
        except api.UnknownModel as e:
            raise Reject(404, str(e), "model", "model_not_found") from None
        except InputError as e:
            raise Reject(400, str(e), getattr(e, "param", None)) from None

    async def _compute(self, request, groups):
        """Hand the groups to the worker; drop them if the client leaves first."""
        answer = self.worker.submit(Job(groups, self.settings.truncate))
        gone = asyncio.ensure_future(request.receive())  # resolves when the client disconnects
        try:
            await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not answer.done():
            answer.cancel()  # the worker drops the rows before computing them
            raise Reject(499, "the client left")
        try:
            return answer.result()
        except InputError as e:
            raise Reject(400, str(e), getattr(e, "param", None)) from None

    async def _json(self, body):
        return Response(await run_in_threadpool(json.dumps, body, separators=(",", ":")),
                        media_type="application/json")

    async def _reject(self, request, err: Reject):
        return error_response(request.url.path, err)

    async def _http_error(self, request, exc):
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error_response(request.url.path, Reject(exc.status_code, message[exc.status_code]))

    async def _crash(self, request, exc):
        return error_response(request.url.path, Reject(500, f"internal error: {type(exc).__name__}: {exc}"))


def playground_page() -> Response:
    """The playground (GET /): one self-contained page; it loads nothing but this server's routes,
    which the Content-Security-Policy enforces. It holds no data, so it needs no key: its calls do."""
    from importlib.resources import files
    csp = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
           "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return Response((files("bge_ref") / "playground.html").read_bytes(), media_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": csp, "Cache-Control": "no-cache"})


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, with /health draining on SIGTERM/SIGINT and exit 0 after the drain (recent
    uvicorn re-raises the signal after shutdown, which would end the process with -15)."""

    def __init__(self, config, state: Server):
        super().__init__(config)
        self.state = state

    @contextmanager
    def capture_signals(self):
        import signal
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def handle_exit(self, sig, frame):
        self.state.draining = True
        super().handle_exit(sig, frame)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model, settings: Settings, host="127.0.0.1", port=8080) -> int:
    """Serve until SIGTERM or SIGINT; returns 0 after the requests in flight are answered."""
    if settings.api_key is None and not is_loopback(host):
        print(f"bge-ref: warning: serving on {host} without an API key: anyone who can reach this port can "
              "use it (set --api-key or $BGE_REF_API_KEY)", file=sys.stderr)
    state = Server(model, settings)
    state.worker.start()
    config = uvicorn.Config(state.app, host=host, port=port, lifespan="off", access_log=False,
                            log_level="warning", timeout_graceful_shutdown=None)
    print(f"bge-ref: serving {settings.served} on http://{host}:{port}", file=sys.stderr, flush=True)
    try:
        _Uvicorn(config, state).run()
    finally:
        state.worker.stop()
    return 0
