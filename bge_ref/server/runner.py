"""Running the app: the listening socket, uvicorn, and the drain on SIGTERM or SIGINT.

The socket is bound here, before uvicorn starts, so a busy port is one BgeRefError naming it. uvicorn
runs in a thread of its own, where it leaves the signals alone (it only installs handlers in the main
thread); the main thread's handlers turn /health to 503 and ask uvicorn to stop through its public
`should_exit`: no new connection is accepted, the requests in flight are answered, and serve()
returns 0 (uvicorn's own handlers would re-raise the signal after the drain, ending with -15).
A connection that sends no request within --body-timeout seconds is closed (reap_silent)."""
from __future__ import annotations

import asyncio
import errno
import signal
import socket
import sys
import threading
import time

import uvicorn

from ..errors import BgeRefError
from .app import Server
from .settings import Settings, is_loopback


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), or a BgeRefError saying the port is taken."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise BgeRefError(f"cannot serve on host {host!r}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart reuses a port in TIME_WAIT
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise BgeRefError(f"port {port} on {host} is already in use") from None
        raise BgeRefError(f"cannot listen on port {port} on {host}: {e.strerror}") from None
    return sock


async def reap_silent(server: uvicorn.Server, deadline: float):
    """Close connections that have sent no request head within `deadline` seconds of opening: uvicorn
    has no such deadline, so a silent socket would hold one of --max-connections for ever. (Between
    requests, uvicorn's keep-alive timeout closes idle connections itself.)"""
    opened: dict = {}
    while not server.should_exit:
        now = time.monotonic()
        opened = {c: opened.get(c, now) for c in list(server.server_state.connections)}
        for connection, since in opened.items():
            if getattr(connection, "cycle", True) is None and now - since > deadline:  # no request yet
                connection.transport.close()
        await asyncio.sleep(min(0.5, deadline / 4))


async def _serve_and_reap(server: uvicorn.Server, sock: socket.socket, deadline: float):
    reaper = asyncio.ensure_future(reap_silent(server, deadline))
    try:
        await server.serve(sockets=[sock])
    finally:
        reaper.cancel()


def serve(model, settings: Settings, host="127.0.0.1", port=8080, sock: socket.socket | None = None) -> int:
    """Serve until SIGTERM or SIGINT; returns 0 after the requests in flight are answered. `sock`:
    bind(host, port) done beforehand (the CLI binds before loading the model, so a busy port is
    reported at once)."""
    if settings.api_key is None and not is_loopback(host):
        print(f"bge-ref: warning: serving on {host} without an API key: anyone who can reach this port can "
              "use it (set --api-key or $BGE_REF_API_KEY)", file=sys.stderr)
    sock = sock or bind(host, port)
    state = Server(model, settings)
    config = uvicorn.Config(state.app, lifespan="off", access_log=False, log_level="warning",
                            timeout_graceful_shutdown=None, backlog=min(2048, settings.max_connections))
    server = uvicorn.Server(config)
    state.connections = lambda: len(server.server_state.connections)
    thread = threading.Thread(target=asyncio.run, args=(_serve_and_reap(server, sock, settings.body_timeout),),
                              name="bge-ref-http")

    def on_signal(sig, frame):
        state.draining = True
        if server.should_exit and sig == signal.SIGINT:
            server.force_exit = True  # a second Ctrl-C: stop without waiting
        server.should_exit = True

    state.worker.start()
    main = threading.current_thread() is threading.main_thread()  # signals can only be caught there
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    print(f"bge-ref: serving {settings.served} on http://{host}:{port}", file=sys.stderr, flush=True)
    try:
        thread.start()
        while thread.is_alive():
            thread.join(0.5)  # wakes for the signal handlers
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
        state.worker.stop()
    if not server.started:
        raise BgeRefError(f"the HTTP server on port {port} on {host} did not start (see the lines above)")
    return 0
