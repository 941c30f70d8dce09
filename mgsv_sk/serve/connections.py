"""Connections that cannot be held for nothing: a deadline for each request's headers and a
cap on one address's open connections.

uvicorn times out a connection that idles between requests, but not one that is opened
and never finishes a request's headers (measured: a silent connection and one that sends
a header line every second were both still open after 40 s), so a client can hold as
many connections as the process has file descriptors. :func:`guarded_protocol` is
uvicorn's h11 protocol with two rules added at the connection, before any request
exists (and a request h11 cannot parse answered with a JSON error, as every other):

- each request's headers must be complete within ``header_seconds`` of the connection
  opening or of the previous answer (else the connection is closed): real clients send
  them at once;
- an address may hold ``max_connections`` open connections; one more is answered 503
  (JSON, ``Retry-After``) and closed. Behind a reverse proxy every connection comes from
  the proxy, whose own limits then apply: raise it to the proxy's pool.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["guarded_protocol"]


def _answer(status: bytes, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer with the service's JSON error body, closing the connection
    (written before or instead of any request, so not through h11)."""
    body = json.dumps({"error": message}).encode()
    return (b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"%sconnection: close\r\n\r\n" % (status, len(body), extra)) + body


def _refusal(max_connections: int, retry_after_s: int) -> bytes:
    return _answer(b"503 Service Unavailable",
                   f"this address already holds {max_connections} open connections to the "
                   "server; reuse them (keep-alive) or close some",
                   b"retry-after: %d\r\n" % retry_after_s)


#: uvicorn answers a request h11 cannot parse with a text/plain 400; the service's errors
#: are JSON.
_NOT_HTTP = _answer(b"400 Bad Request",
                    "the request is not valid HTTP/1.1 (a malformed request line or header, "
                    "or headers over 16 KiB); send a standard HTTP request")


def guarded_protocol(header_seconds: float, max_connections: int,
                     retry_after_s: int = 1) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the header deadline and the per-address cap (pass it
    as ``uvicorn.Config(http=...)``); each call makes a class with its own counts."""
    open_by_address: Counter[str] = Counter()
    refusal = _refusal(max_connections, retry_after_s)

    class GuardedH11(H11Protocol):
        _deadline: Any = None
        _address = ""
        _started: Any = None  # the request cycle whose headers ended the last wait

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._address = self.client[0] if self.client else "unknown"
            open_by_address[self._address] += 1
            if open_by_address[self._address] > max_connections:
                transport.write(refusal)
                transport.close()
                return
            self._wait_for_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            open_by_address[self._address] -= 1
            if open_by_address[self._address] <= 0:
                del open_by_address[self._address]
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and self.cycle is not self._started:
                self._started = self.cycle  # a request's headers are in
                self._stop_waiting()

        def on_response_complete(self) -> None:
            # armed first: answering may start a pipelined request, which disarms it
            self._wait_for_headers()
            super().on_response_complete()

        def _wait_for_headers(self) -> None:
            self._stop_waiting()
            self._deadline = self.loop.call_later(header_seconds, self._headers_late)

        def _stop_waiting(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def send_400_response(self, msg: str) -> None:
            self.transport.write(_NOT_HTTP)
            self.transport.close()

        def _headers_late(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedH11
