"""The playground: GET / (one self-contained page, bge_ref/server/playground.html) and POST /attention,
the Inside view's numbers (bge_ref/inspect.py: the reference forward's attention probabilities of one
layer and the hidden-state norms of every layer, for one text)."""
from __future__ import annotations

from importlib.resources import files

from starlette.responses import Response

from .. import inspect
from ..errors import InputError
from .gate import Reject, parse_json

# The page loads nothing but itself and this server's routes: no CDN, works offline. The policy
# makes the browser hold it to that.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def page() -> Response:
    """The page holds no data, so it needs no key (a browser cannot send one to open it); every call
    it makes does."""
    html = (files(__package__) / "playground.html").read_bytes()
    return Response(html, media_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})


async def attention(server, request) -> Response:
    """{"text": str, "layer": int} -> {"tokens", "ids", "truncated", "layer", "attention": [H][S][S],
    "hidden_norms": [L+1][S]}; computed by the worker thread, between batches, like /tokenize."""
    text, layer = server._parsed(inspect.parse_request, parse_json(await request.body()),
                                 server.model.config.num_hidden_layers)
    truncate = server.settings.truncate
    try:
        body = await server.worker.submit(lambda m: inspect.as_json(inspect.look_inside(m, text, layer, truncate)))
    except InputError as e:  # a text over the max length with --no-truncate
        raise Reject(400, str(e), getattr(e, "param", None)) from None
    return await server._json(body)
