"""The ASGI gate in front of the routes: request ids, metrics, admission and error bodies.

Admission runs before routing, in this order, so that a caller without the key learns nothing and
costs nothing: 503 while draining; 503 past --max-connections; 401 without the key (before a byte of
the body is read); the body, at most --max-body-bytes (413) within --body-timeout seconds (408);
429 past --max-concurrent-requests. The body read here is replayed to the route. Every answer,
errors included, carries an x-request-id."""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid

from starlette.responses import Response

from .routes import errors_of_path
from .settings import RETRY_AFTER

log = logging.getLogger("bge_ref.server")

OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
                429: "rate_limit_error", 500: "server_error", 503: "server_error"}
OPENAI_CODES = {401: "invalid_api_key", 404: "not_found", 408: "request_timeout", 413: "payload_too_large",
                429: "rate_limit_exceeded", 500: "internal_error", 503: "service_unavailable"}
ERRORS_KEY = "bge_ref.errors"  # the scope key holding the route's error format, for the app's handlers
REQUEST_ID_MAX = 128
_NOT_ID = re.compile(r"[^A-Za-z0-9._:/+=@-]")  # what is left of a client's id: no spaces, quotes or controls


class Reject(Exception):
    """An HTTP error answered in the route's own error format."""

    def __init__(self, status: int, message: str, param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(errors: str, err: Reject) -> dict:
    """OpenAI's error body, or the hosted API's envelope (its code being the HTTP status)."""
    if errors == "openai":
        return {"error": {"message": err.message, "type": OPENAI_TYPES.get(err.status, "invalid_request_error"),
                          "param": err.param, "code": err.code or OPENAI_CODES.get(err.status)}}
    return {"result": None, "success": False, "errors": [{"code": err.status, "message": err.message}],
            "messages": []}


def error_response(errors: str, err: Reject) -> Response:
    return json_response(error_body(errors, err), err.status, err.headers)


def json_response(body, status=200, headers=None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status, headers, media_type="application/json")


def parse_json(body: bytes):
    """The body as JSON, whatever the Content-Type; a 400 for invalid or too deeply nested JSON."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise Reject(400, f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise Reject(400, "the body's JSON is nested too deeply") from None


def request_id(scope) -> str:
    """The client's x-request-id, cleaned and cut to 128 characters; else a new one."""
    given = header(scope, b"x-request-id").decode("latin-1")
    given = _NOT_ID.sub("", given)[:REQUEST_ID_MAX]
    return given or uuid.uuid4().hex


def header(scope, name: bytes) -> bytes:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return b""


def authorized(scope, key: str) -> bool:
    scheme, _, token = header(scope, b"authorization").partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key.encode())  # constant time


async def read_body(receive, declared: bytes, limit: int, timeout: float) -> bytes:
    """The request body; a 413 once it passes `limit` bytes (by Content-Length before reading), a 408
    if it takes more than `timeout` seconds. An oversized body is still read and discarded, up to a
    bound and within the deadline, so the client gets the answer instead of a reset connection."""
    too_big = declared.isdigit() and int(declared) > limit
    chunks, size = [], 0

    async def read():
        nonlocal size, too_big
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Reject(499, "the client left")
            size += len(message.get("body", b""))
            too_big = too_big or size > limit
            if not too_big:
                chunks.append(message.get("body", b""))
            if not message.get("more_body") or size > 16 * limit:
                return
    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        if not too_big:
            raise Reject(408, f"the body was not received within {timeout:g} s (--body-timeout); "
                              f"{size} bytes arrived", headers={"Connection": "close"}) from None
    if too_big:
        raise Reject(413, f"the body has {declared.decode() if declared.isdigit() else 'more than ' + str(limit)} "
                          f"bytes; the limit is {limit} (--max-body-bytes)", headers={"Connection": "close"})
    return b"".join(chunks)


class Gate:
    """ASGI middleware around the app: request id, metrics and crash safety for every request (CORS
    preflights included, when `cors` wraps admission), admission before routing.

    `state` is the app.Server (settings, metrics, counters); `find(scope)` gives the Endpoint of a
    request, or None for a path no route has; `cors(app)` wraps an ASGI app with the CORS
    middleware (or returns it as is)."""

    def __init__(self, app, state, find, cors=lambda app: app):
        self.app, self.state, self.find = app, state, find
        self.inner = cors(self._admit_then_route)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint, start, rid = self.find(scope), time.monotonic(), request_id(scope)
        scope["bge_ref.endpoint"] = endpoint
        scope[ERRORS_KEY] = endpoint.errors if endpoint else errors_of_path(scope["path"])
        label = endpoint.label if endpoint else "other"
        status = [499]  # stays 499 if the client leaves before an answer

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        self.state.open_requests += 1
        try:
            await self.inner(scope, receive, send_with_id)
        except Exception as e:  # a bug: answer 500 if nothing was sent yet, and keep the connection
            log.exception("request %s: %s %s failed", rid, scope["method"], scope["path"])
            if status[0] == 499:
                err = Reject(500, f"internal error: {type(e).__name__}: {e}")
                await error_response(scope[ERRORS_KEY], err)(scope, receive, send_with_id)
        finally:
            self.state.open_requests -= 1
            self.state.metrics.add("bge_ref_requests_total", route=label, status=status[0])
            self.state.metrics.observe("bge_ref_request_seconds", time.monotonic() - start, route=label)

    async def _admit_then_route(self, scope, receive, send):
        endpoint = scope["bge_ref.endpoint"]
        limited = endpoint is not None and endpoint.limited
        try:
            body = await self._admit(scope, receive, endpoint)
        except Reject as err:
            return await error_response(scope[ERRORS_KEY], err)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: waits for the client to leave
        try:
            await self.app(scope, replay, send)
        finally:
            if limited:
                self.state.in_flight -= 1
                self.state.metrics.add("bge_ref_requests_in_flight", -1)

    async def _admit(self, scope, receive, endpoint) -> bytes:
        s, state = self.state.settings, self.state
        if state.draining and (endpoint is None or endpoint.label != "health"):
            raise Reject(503, "the server is shutting down; retry on another instance")
        if state.connections() > s.max_connections:
            raise Reject(503, f"too many connections: more than {s.max_connections} are open (--max-connections); "
                              f"retry after {RETRY_AFTER} s", headers={"Retry-After": RETRY_AFTER, "Connection": "close"})
        if s.api_key is not None and (endpoint is None or endpoint.auth) and not authorized(scope, s.api_key):
            raise Reject(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")
        body = await read_body(receive, header(scope, b"content-length"), s.max_body_bytes, s.body_timeout)
        if endpoint is not None and endpoint.limited:
            if state.in_flight >= s.max_concurrent_requests:
                raise Reject(429, f"overloaded: {s.max_concurrent_requests} requests in flight; retry after "
                                  f"{RETRY_AFTER} s", headers={"Retry-After": RETRY_AFTER})
            state.in_flight += 1
            state.metrics.add("bge_ref_requests_in_flight", 1)
        return body
