"""Serve the app with uvicorn on one host and port.

uvicorn handles SIGTERM and SIGINT: it stops accepting connections, lets in-flight
requests finish (up to ``graceful_seconds``), then runs the app's shutdown, which waits for
the inference threads.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run"]


def run(app: Any, host: str = "127.0.0.1", port: int = 8000, *, graceful_seconds: float = 30,
        log_level: str = "info", access_log: bool = False) -> None:
    """Serve ``app`` until SIGTERM / SIGINT (blocking)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            access_log=access_log, timeout_graceful_shutdown=graceful_seconds,
                            server_header=False)
    uvicorn.Server(config).run()
