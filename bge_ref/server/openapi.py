"""The OpenAPI 3.1 document of `bge-ref serve`: every route of routes.ENDPOINTS with its request and
response schemas, error bodies and auth. A pure function of the server's /info (or of the defaults),
importable without starlette: the server answers it at GET /openapi.json, and the docs render the
HTTP reference from it."""
from __future__ import annotations

from .. import api
from .routes import ENDPOINTS, Endpoint
from .settings import HOSTED_NAME, Settings


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


STR_OR_LIST = {"oneOf": [{"type": "string", "minLength": 1},
                         {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}]}
POOLING = {"type": "string", "enum": list(api.RUN_POOLINGS), "default": "mean"}
VECTOR = {"type": "array", "items": {"type": "number"}, "description": "an L2-normalized embedding"}


def _schemas(hidden_size, max_tokens) -> dict:
    """The components' schemas; `hidden_size` and `max_tokens` are the model's (None: any)."""
    dims = {"type": "integer"} if hidden_size is None else {"type": "integer", "const": hidden_size}
    run_one = {"type": "object", "additionalProperties": False, "required": ["text"],
               "properties": {"text": {**STR_OR_LIST, "description": f"1 to {api.API_MAX_TEXTS} non-empty texts"},
                              "pooling": POOLING}}
    run_result = {"type": "object", "required": ["shape", "data", "pooling"], "properties": {
        "shape": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
                  "description": "[number of texts, hidden size]"},
        "data": {"type": "array", "items": VECTOR}, "pooling": POOLING}}
    ids = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1,
           "description": "token ids of this model's vocabulary, without [CLS]/[SEP]; ids of [unusedN] tokens "
                          "(another tokenizer's ids, such as tiktoken's) are refused"}
    return {
        "RunInputs": {"oneOf": [run_one, {
            "type": "object", "additionalProperties": False, "required": ["requests"],
            "properties": {"requests": {"type": "array", "items": run_one, "minItems": 1, "description":
                                        f"at most {api.API_MAX_TEXTS} texts in all, over every entry"}}}]},
        "RunResult": {"oneOf": [run_result, {"type": "object", "required": ["responses"], "properties": {
            "responses": {"type": "array", "items": run_result}}}]},
        "RunAnswer": {"type": "object", "required": ["result", "success", "errors", "messages"], "properties": {
            "result": _ref("RunResult"), "success": {"const": True},
            "errors": {"type": "array", "maxItems": 0}, "messages": {"type": "array"}}},
        "RunError": {"type": "object", "required": ["result", "success", "errors", "messages"], "properties": {
            "result": {"type": "null"}, "success": {"const": False},
            "errors": {"type": "array", "items": {"type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "integer", "description": "the HTTP status"}, "message": {"type": "string"}}}},
            "messages": {"type": "array"}},
            "description": "the hosted API's error envelope: on its route and the operations routes"},
        "EmbeddingsRequest": {"type": "object", "additionalProperties": False, "required": ["input"], "properties": {
            "input": {"oneOf": [{"type": "string", "minLength": 1},
                                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
                                 "maxItems": api.OPENAI_MAX_INPUTS},
                                ids, {"type": "array", "items": ids, "minItems": 1, "maxItems": api.OPENAI_MAX_INPUTS}]},
            "model": {"type": "string", "description": "a served name; default: the first"},
            "encoding_format": {"type": "string", "enum": ["float", "base64"], "default": "float",
                                "description": "base64: the little-endian float32 bytes"},
            "dimensions": {**dims, "description": "absent, or the model's hidden size"},
            "user": {"type": "string"}}},
        "EmbeddingsResponse": {"type": "object", "required": ["object", "model", "data", "usage"], "properties": {
            "object": {"const": "list"}, "model": {"type": "string"},
            "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"],
                                                "properties": {"object": {"const": "embedding"},
                                                               "index": {"type": "integer"},
                                                               "embedding": {"oneOf": [VECTOR, {"type": "string"}]}}}},
            "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"], "properties": {
                "prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
                "description": "tokens embedded, [CLS]/[SEP] included, after truncation"}}},
        "OpenAIError": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"], "properties": {
                "message": {"type": "string"}, "type": {"type": "string"},
                "param": {"type": ["string", "null"], "description": "the field at fault"},
                "code": {"type": ["string", "null"]}}}},
            "description": "OpenAI's error body: on the /v1 routes at both base URLs"},
        "Model": {"type": "object", "required": ["id", "object", "created", "owned_by"], "properties": {
            "id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
            "owned_by": {"type": "string"}}},
        "ModelList": {"type": "object", "required": ["object", "data"], "properties": {
            "object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}},
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
        "Info": {"type": "object", "properties": {
            "served_model_names": {"type": "array", "items": {"type": "string"}}, "checkpoint": {"type": "string"},
            "hidden_size": {"type": "integer"}, "num_hidden_layers": {"type": "integer"},
            "max_input_tokens": {"type": "integer"}, "pooling": {"type": "string"}, "dtype": {"type": "string"},
            "truncate": {"type": "boolean"}, "version": {"type": "string"},
            "limits": {"type": "object", "additionalProperties": {"type": "number"}}}},
        "TokenizeRequest": {"type": "object", "additionalProperties": False, "required": ["text"],
                            "properties": {"text": STR_OR_LIST}},
        "TokenizeResponse": {"type": "object", "required": ["tokens", "max_input_tokens", "truncate"], "properties": {
            "tokens": {"type": "array", "items": {"type": "object", "properties": {
                "ids": {"type": "array", "items": {"type": "integer"}},
                "tokens": {"type": "array", "items": {"type": "string"}},
                "count": {"type": "integer"},
                "truncated": {"type": "boolean", "description": f"cut to {max_tokens or 'the max'} tokens"}}}},
            "max_input_tokens": {"type": "integer"}, "truncate": {"type": "boolean"}}},
    }


# What each handler answers: summary, request body schema (or None), answer (media type, schema).
OPERATIONS = {
    "run": ("The hosted API's route: run()'s schema (Workers AI's @cf/baai/bge-large-en-v1.5)",
            "RunInputs", ("application/json", "RunAnswer")),
    "openai": ("OpenAI's embeddings", "EmbeddingsRequest", ("application/json", "EmbeddingsResponse")),
    "models": ("The served model names, in OpenAI's format", None, ("application/json", "ModelList")),
    "retrieve_model": ("One served model, in OpenAI's format", None, ("application/json", "Model")),
    "health": ("200 while serving; 503 while draining (no key needed)", None, ("application/json", "Health")),
    "info": ("Served names, checkpoint, sizes, pooling, dtype, limits, version", None, ("application/json", "Info")),
    "tokenize": ("Each text's tokens and ids as embedded (after truncation)", "TokenizeRequest",
                 ("application/json", "TokenizeResponse")),
    "prometheus": ("Counters and histograms in Prometheus' text format", None, ("text/plain", None)),
    "openapi": ("This document (no key needed)", None, ("application/json", None)),
}

STATUS_TEXT = {400: "an invalid body or field (the message names it)", 401: "a missing or wrong key",
               404: "an unknown model", 408: "the body took longer than the body timeout",
               413: "the body is over the body size limit", 429: "too many requests in flight (Retry-After)",
               500: "a non-finite result or an internal error; never a 200",
               503: "draining, or too many connections (Retry-After)"}


def _statuses(e: Endpoint) -> list[int]:
    out = [400, 408, 413] if e.method == "POST" else []
    out += [401] if e.auth else []
    out += [404] if "{model" in e.path or e.handler == "openai" else []  # an unknown model
    out += [429] if e.limited else []
    return sorted(out + [500, 503])


def _operation(e: Endpoint, doc) -> dict:
    summary, request, (media, schema) = doc
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in ("account_id", "model") if "{" + name in e.path]
    error = _json(_ref("OpenAIError" if e.errors == "openai" else "RunError"))
    op = {"operationId": e.handler + ("_account" if e.path.startswith("/client/") and e.handler != "run" else ""), "summary": summary, "tags": [e.label],
          "responses": {"200": {"description": "OK", "content": {media: {"schema": _ref(schema) if schema else {}}}},
                        **{str(s): {"description": STATUS_TEXT[s], **error} for s in _statuses(e)}}}
    if params:
        op["parameters"] = params
    if request:
        op["requestBody"] = {"required": True, **_json(_ref(request)),
                             "description": "read as JSON whatever the Content-Type"}
    if not e.auth:
        op["security"] = []
    return op


def openapi_path(path: str) -> str:
    """A Starlette path template as OpenAPI writes it ("{model:path}" -> "{model}")."""
    return path.replace(":path}", "}")


def spec(info: dict | None = None) -> dict:
    """The OpenAPI 3.1 document. `info`: the server's GET /info (served names, sizes, limits,
    version); None describes a server with the default settings and any model."""
    from .. import __version__
    info = info or {"served_model_names": [HOSTED_NAME], "limits": Settings(served=[]).limits(),
                    "version": __version__}
    limits = info["limits"]
    description = (
        "bge-ref serve: the hosted API's REST route (Workers AI) and OpenAI's embeddings over HTTP. "
        f"Served model names: {', '.join(info['served_model_names'])}. Auth: when the server has a key, every "
        "route but /health and /openapi.json needs 'Authorization: Bearer KEY' (401 otherwise, before the body "
        "is read). Admission, in order: 503 while draining or past max_connections, 401, 413 past "
        "max_body_bytes, 408 past body_timeout_seconds, 429 past max_concurrent_requests; then 404, 400. "
        f"Limits: {', '.join(f'{k} {v:g}' for k, v in limits.items())}. Errors come in each route's own "
        "format (RunError or OpenAIError). Every answer carries an x-request-id header, echoed from the "
        "request when given.")
    paths: dict = {}
    for e in ENDPOINTS:
        if e.handler in OPERATIONS:  # a route without an entry is missing here (a test says so)
            paths.setdefault(openapi_path(e.path), {})[e.method.lower()] = _operation(e, OPERATIONS[e.handler])
    return {"openapi": "3.1.0",
            "info": {"title": "bge-ref serve", "version": info["version"], "description": description,
                     "license": {"name": "MIT", "identifier": "MIT"}},
            "paths": paths,
            "components": {"schemas": _schemas(info.get("hidden_size"), info.get("max_input_tokens")),
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                          "description": "--api-key or $BGE_REF_API_KEY"}}},
            "security": [{"bearer": []}]}
