"""`bge-ref serve`: the hosted API's REST route and OpenAI's /v1/embeddings over HTTP.

    POST /client/v4/accounts/{account_id}/ai/run/{model}   the model page's route, run()'s schema
    POST /v1/embeddings, /client/v4/accounts/{account_id}/ai/v1/embeddings   OpenAI's schema
    GET /v1/models, /v1/models/{id} (at both base URLs), GET /health, GET /info, POST /tokenize,
    GET /metrics (Prometheus text), GET /openapi.json

One role per module:
    settings.py  Settings and their defaults (also the CLI's), served names    (pure Python)
    routes.py    the route table: paths, handlers, auth, limits, error formats  (pure Python)
    metrics.py   counters and histograms, Prometheus text                       (pure Python)
    batcher.py   the worker thread that owns the model and batches all requests (NumPy)
    gate.py      the ASGI gate: request ids, admission (503, 401, 413, 408, 429), error bodies
    app.py       the route handlers and the Starlette app
    runner.py    the listening socket, uvicorn, the drain on SIGTERM/SIGINT

Starlette and uvicorn (the `serve` extra) are imported only by gate, app and runner: the names
below that need them raise a BgeRefError naming the extra when it is missing, while settings and
routes import without it (the CLI builds its parser from settings' defaults).
"""
from __future__ import annotations

import importlib

from ..errors import BgeRefError
from .settings import BGE_LARGE_HUB_ID, DEFAULTS, HOSTED_NAME, RETRY_AFTER, Settings, is_loopback, served_names

_LAZY = {"Metrics": "metrics", "Worker": "batcher", "Job": "batcher", "Row": "batcher", "Future": "batcher",
         "Gate": "gate", "Reject": "gate", "read_body": "gate", "authorized": "gate", "parse_json": "gate",
         "error_response": "gate", "Server": "app", "serve": "runner", "bind": "runner"}

__all__ = ["BGE_LARGE_HUB_ID", "DEFAULTS", "HOSTED_NAME", "RETRY_AFTER", "Settings", "is_loopback", "served_names",
           *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'bge_ref.server' has no attribute {name!r}")
    try:
        importlib.import_module("starlette")
        importlib.import_module("uvicorn")
    except ImportError as e:
        raise BgeRefError(f"bge-ref serve needs the serve extra ({e.name} is not installed): "
                          'pip install "bge-ref[serve]"') from None
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
