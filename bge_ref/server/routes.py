"""The route table: every route the server answers, in one place. The app binds each entry to the
Server method named `handler`, the gate reads its auth, limit and error format, and the OpenAPI
document (openapi.py) describes each entry. Pure Python, no starlette.

To add a route: one Endpoint here, its handler method on app.Server, its entry in openapi.py."""
from __future__ import annotations

from dataclasses import dataclass

ACCOUNT = "/client/v4/accounts/{account_id}/ai"  # the hosted API's base, for any account id
OPENAI_BASES = ("/v1", ACCOUNT + "/v1")  # OpenAI's routes answer at both


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str           # a Starlette path template ("{model:path}" takes slashes)
    handler: str        # the app.Server method that answers it
    label: str          # the `route` label of the metrics
    errors: str = "run"  # the error body: "openai" (OpenAI's) or "run" (the hosted API's envelope)
    auth: bool = True   # needs the key, when the server has one
    limited: bool = False  # counts toward --max-concurrent-requests (429 past it)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("POST", ACCOUNT + "/run/{model:path}", "run", "run", limited=True),
    *(Endpoint("POST", base + "/embeddings", "openai", "openai", "openai", limited=True) for base in OPENAI_BASES),
    *(Endpoint("GET", base + "/models", "models", "models", "openai") for base in OPENAI_BASES),
    *(Endpoint("GET", base + "/models/{model:path}", "retrieve_model", "models", "openai") for base in OPENAI_BASES),
    Endpoint("GET", "/health", "health", "health", auth=False),
    Endpoint("GET", "/info", "info", "info"),
    Endpoint("POST", "/tokenize", "tokenize", "tokenize", limited=True),
    Endpoint("GET", "/metrics", "prometheus", "metrics"),
    Endpoint("GET", "/openapi.json", "openapi", "openapi", auth=False),
)


def errors_of_path(path: str) -> str:
    """The error format of a path no route matches: OpenAI's under its base URLs, else the envelope."""
    return "openai" if path.startswith("/v1/") or "/ai/v1/" in path else "run"
