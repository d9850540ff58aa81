"""The server's settings and their defaults: the one source for `bge-ref serve`'s flags, /info and the
OpenAPI document. Pure Python (no starlette), so the CLI can build its parser without the serve extra."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from pathlib import Path

BGE_LARGE_HUB_ID = "BAAI/bge-large-en-v1.5"
HOSTED_NAME = "@cf/baai/bge-large-en-v1.5"  # the hosted API's name for it
RETRY_AFTER = "1"  # seconds, with every 429 and 503


@dataclass
class Settings:
    served: list[str]
    api_key: str | None = None
    max_batch_tokens: int = 16384  # real tokens per batch (the sum of the texts' token counts)
    max_batch_size: int = 32  # texts per batch, as encode()'s batch_size: larger batches run slower here
    max_concurrent_requests: int = 512  # embedding requests in flight; past it, 429
    max_connections: int = 1024  # open connections; past it, 503 (each costs a file descriptor)
    max_body_bytes: int = 2_000_000
    body_timeout: float = 10.0  # seconds to send a whole body (past it, 408) or a first request (else closed)
    truncate: bool = True
    cors_allow_origins: list[str] = field(default_factory=list)

    def limits(self) -> dict:
        """The limits /info reports (and the OpenAPI document states)."""
        from .. import api
        return {"max_batch_tokens": self.max_batch_tokens, "max_batch_size": self.max_batch_size,
                "max_concurrent_requests": self.max_concurrent_requests, "max_connections": self.max_connections,
                "max_body_bytes": self.max_body_bytes, "body_timeout_seconds": self.body_timeout,
                "max_texts_per_run_request": api.API_MAX_TEXTS, "max_openai_inputs": api.OPENAI_MAX_INPUTS}


# The numeric flags of `bge-ref serve`: their defaults are the dataclass's own.
DEFAULTS = {f.name: f.default for f in fields(Settings) if isinstance(f.default, (int, float)) and f.name != "truncate"}


def served_names(model_arg: str | None, resolved: str) -> list[str]:
    """The checkpoint's hub id or directory name, plus the hosted API's name for bge-large-en-v1.5."""
    arg = model_arg or resolved
    name = arg if not Path(arg).expanduser().is_dir() else Path(arg).expanduser().resolve().name
    return [name, HOSTED_NAME] if name == BGE_LARGE_HUB_ID else [name]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
