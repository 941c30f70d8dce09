"""Serve the app with uvicorn on one host and port.

uvicorn handles SIGTERM and SIGINT: it stops accepting connections, lets in-flight
requests finish (up to ``graceful_seconds``), then runs the app's shutdown, which waits for
the inference threads. uvicorn then re-raises the signal to the handler that was there
before it; :func:`run` puts a recording one there, so a graceful stop returns normally
(the command exits 0) instead of dying by the signal.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["run", "uvicorn_config"]


def uvicorn_config(app: Any, host: str = "127.0.0.1", port: int = 8000, *,
                   graceful_seconds: float = 30, log_level: str = "info",
                   access_log: bool = False) -> Any:
    """uvicorn's configuration for ``app``: h11 with the app's connection limits (a
    deadline for each request's headers, a cap on one address's open connections: see
    :mod:`.connections`), no WebSocket upgrade, no ``Server`` header, forwarded headers
    only from ``forwarded_allow_ips``; the event loop is
    uvloop's where it is installed (the ``serve`` extra), else asyncio's."""
    import uvicorn

    from ..config import ServeConfig
    from .connections import guarded_protocol

    state = getattr(getattr(app, "state", None), "serve", None)
    limits = state.config if state is not None else ServeConfig()
    protocol = guarded_protocol(limits.header_seconds, limits.client_connections,
                                limits.retry_after_s, limits.connections,
                                limits.body_idle_seconds,
                                state.pacer if state is not None else None)
    # ws="none": the service has no WebSocket route, and an upgraded connection would leave
    # the guard's protocol without its close (its count never returned)
    # forwarded headers only from the proxies named (uvicorn trusts 127.0.0.1 by default:
    # every client of a server on the loopback could name itself anew each request)
    proxies = limits.trusted_proxies
    return uvicorn.Config(app, host=host, port=port, http=protocol, ws="none", loop="auto",
                          log_level=log_level, access_log=access_log, server_header=False,
                          proxy_headers=proxies is not None, forwarded_allow_ips=proxies,
                          timeout_graceful_shutdown=max(1, round(graceful_seconds)))


def run(app: Any, host: str = "127.0.0.1", port: int = 8000, *, graceful_seconds: float = 30,
        log_level: str = "info", access_log: bool = False) -> int | None:
    """Serve ``app`` until SIGTERM / SIGINT (blocking); returns the signal that stopped it
    (None if it stopped otherwise)."""
    import uvicorn

    config = uvicorn_config(app, host, port, graceful_seconds=graceful_seconds,
                            log_level=log_level, access_log=access_log)
    received: list[int] = []
    stops = (signal.SIGINT, signal.SIGTERM)
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, lambda signum, _: received.append(signum))
                for s in stops} if main else {}
    try:
        uvicorn.Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0] if received else None
