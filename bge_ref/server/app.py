"""The routes and the Starlette app: each route parses its JSON and checks every field (400), hands
the texts to the batching worker and renders the answer (in a thread of Starlette's pool: the event
loop never runs NumPy). Which routes exist, with their auth, limits and error formats: routes.py."""
from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.routing import Match, Route

from .. import api
from . import openapi
from ..errors import BgeRefError, InputError
from .batcher import Job, Worker
from .gate import ERRORS_KEY, Gate, Reject, error_response, json_response, parse_json
from .metrics import Metrics
from .routes import ENDPOINTS
from .settings import Settings

CREATED = int(time.time())  # the `created` of /v1/models: when this server started


class Server:
    """The app's state (model, settings, worker, metrics, counters) and its route handlers."""

    def __init__(self, model, settings: Settings):
        self.model, self.settings = model, settings
        self.metrics = Metrics()
        self.worker = Worker(model, settings.max_batch_tokens, settings.max_batch_size, self.metrics)
        self.in_flight = self.open_requests = 0
        self.draining = False
        self.connections = lambda: self.open_requests  # the runner counts the server's open connections
        self.unused_ids = unused_token_ids(model)
        self.openapi_document = openapi.spec(self.info_body())
        self.routes = [(e, Route(e.path, getattr(self, e.handler), methods=[e.method])) for e in ENDPOINTS]
        handlers = {Reject: self._reject, 404: self._http_error, 405: self._http_error, Exception: self._crash}
        starlette = Starlette(routes=[r for _, r in self.routes], exception_handlers=handlers)
        self.app = Gate(starlette, self, self.endpoint_of, cors(settings.cors_allow_origins))

    def endpoint_of(self, scope):
        """The Endpoint whose path and method match; else one whose path matches (405); else None."""
        partial = None
        for endpoint, route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return endpoint
            if match is Match.PARTIAL and partial is None:
                partial = endpoint
        return partial

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
                              served=self.settings.served, unused_ids=self.unused_ids)
        vectors, tokens = await self._compute(request, parsed.groups)
        return await self._json(await run_in_threadpool(api.openai_result, parsed, vectors[0], tokens))

    async def models(self, request):
        return json_response({"object": "list", "data": [model_object(n) for n in self.settings.served]})

    async def retrieve_model(self, request):
        name = request.path_params["model"]
        if name not in self.settings.served:
            raise Reject(404, f"model {name!r} does not exist; this server serves {self.settings.served}",
                         "model", "model_not_found")
        return json_response(model_object(name))

    async def health(self, request):
        if self.draining or not self.worker.is_alive():
            raise Reject(503, "draining" if self.draining else "the worker thread has stopped")
        return json_response({"status": "ok"})

    async def info(self, request):
        return json_response(self.info_body())

    def info_body(self) -> dict:
        c, s = self.model.config, self.settings
        from .. import __version__
        return {"served_model_names": s.served, "checkpoint": self.model.name, "hidden_size": c.hidden_size,
                "num_hidden_layers": c.num_hidden_layers, "max_input_tokens": self.model.max_length,
                "pooling": self.model.pooling, "dtype": str(self.model.dtype), "truncate": s.truncate,
                "limits": s.limits(), "version": __version__}

    async def openapi(self, request):
        return json_response(self.openapi_document)

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
        except BgeRefError as e:  # NumericalError and the like: never a 200
            raise Reject(500, f"{type(e).__name__}: {e}") from None

    async def _json(self, body):
        return Response(await run_in_threadpool(json.dumps, body, separators=(",", ":")),
                        media_type="application/json")

    async def _reject(self, request, err: Reject):
        return error_response(request.scope[ERRORS_KEY], err)

    async def _http_error(self, request, exc):
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error_response(request.scope[ERRORS_KEY], Reject(exc.status_code, message[exc.status_code]))

    async def _crash(self, request, exc):
        return error_response(request.scope[ERRORS_KEY], Reject(500, f"internal error: {type(exc).__name__}: {exc}"))


def model_object(name: str) -> dict:
    """A model in OpenAI's format (GET /v1/models)."""
    return {"id": name, "object": "model", "created": CREATED, "owned_by": "bge-ref"}


def cors(origins: list[str]):
    """The CORS middleware for --cors-allow-origin (none: no CORS headers, preflights get 405)."""
    if not origins:
        return lambda app: app
    return lambda app: CORSMiddleware(app, allow_origins=origins, allow_methods=["GET", "POST"],
                                      allow_headers=["authorization", "content-type", "x-request-id"],
                                      expose_headers=["x-request-id", "retry-after"], max_age=600)


_UNUSED = re.compile(r"\[unused\d+\]")


def unused_token_ids(model) -> frozenset:
    """The ids of the vocabulary's [unusedN] tokens, which the tokenizer never produces: token ids
    among them come from another tokenizer (read from the checkpoint's tokenizer.json)."""
    path = Path(model.name) / "tokenizer.json"
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return frozenset()
    return frozenset(i for t, i in vocab.items() if _UNUSED.fullmatch(t) and isinstance(i, int))
