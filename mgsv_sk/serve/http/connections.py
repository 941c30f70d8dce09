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
- an address may hold ``max_connections`` open connections (an IPv6 host counted by its
  /64: :func:`..admission.client_key`); one more is answered 503
  (JSON, ``Retry-After``) and closed. Behind a reverse proxy every connection comes from
  the proxy, whose own limits then apply: raise it to the proxy's pool;
- the process holds at most ``max_total`` connections from all addresses: one more
  closes the connection that has waited longest for its next request's headers (one that
  sent nothing yet, or an idle keep-alive one, which HTTP lets a server close at any
  time), else it is answered 503 and closed. Many addresses that open connections and send
  nothing (every 127.x.y.z is this host's) would otherwise take every file descriptor
  the process may open until their header deadline, and the server could accept no one
  (measured: 22,000 such connections from 440 addresses, each under its share, and
  every other client's request failed for 10 s);
- an answer the client does not read is dropped: once the bytes waiting to be sent pass
  the transport's high-water mark, they must fall back under its low-water mark within
  ``send_idle_seconds`` (the service sends large answers in slices, so that is a few
  hundred KB), else the connection is aborted and its buffer freed. A closed or idle
  connection's pending bytes are otherwise flushed, however long the client takes, so a
  client that stops reading held its answer's memory for as long as it kept the
  connection open;
- an address past its rate (:class:`..admission.Pacer`: the requests a second it may
  start while other addresses are active) has its connection's next request read once
  its debt is repaid (a new connection's first one likewise): nothing is refused, and
  the event loop does none of its work meanwhile. Inference that ran (a 2xx answer of
  :data:`BOUNDED`) is not charged (the per-client share of inference places bounds it),
  but makes its client active; refused or malformed inference requests are charged as
  any other (they cost the event loop alone);
- a body may come in at most :data:`BODY_PIECES` pieces plus one per
  :data:`BYTES_PER_PIECE` bytes of it (chunks of a chunked body, or the reads a
  ``Content-Length`` body trickled in): each piece costs the one event loop every client
  shares a parse, whatever its size, and a 128 KB body sent as 1-byte chunks held the loop
  for 0.7 s (a 2 MiB one would for about 12 s). One more piece is answered 400 and the
  connection closed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..admission import Pacer, client_key
from ..config import ServeConfig
from .middleware import MAX_HEADER_BYTES, MAX_HEADER_FIELDS, MAX_TARGET_BYTES

__all__ = ["guarded_protocol"]


def _answer(status: bytes, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer with the service's JSON error body, closing the connection
    (written before or instead of any request, so not through h11)."""
    body = json.dumps({"error": message}).encode()
    return (b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"%sconnection: close\r\n\r\n" % (status, len(body), extra)) + body


def _refusal(message: str, retry_after_s: int) -> bytes:
    return _answer(b"503 Service Unavailable", message, b"retry-after: %d\r\n" % retry_after_s)


#: Pieces any body may come in, and one more per this many bytes of it (a client's chunks
#: are KB: 2 MiB in 16 KB chunks is 128 pieces; 1-byte chunks stop after about a KB).
BODY_PIECES = 1024
BYTES_PER_PIECE = 256
#: The paths whose requests the per-client share of inference places bounds (``infer``,
#: uploads): those answered 2xx are not charged to the pace.
BOUNDED = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?/infer|/v1/recommend")
#: Seconds a closing connection goes on reading (and dropping) what the client still sends
#: after its last answer, unless the client closes first.
LINGER_SECONDS = 2.0
_SPLINTERED = _answer(b"400 Bad Request",
                      f"the request body came in more than {BODY_PIECES} pieces plus one per "
                      f"{BYTES_PER_PIECE} bytes (chunks or reads of a few bytes each); send "
                      "it in larger chunks")

#: uvicorn answers a request h11 cannot parse with a text/plain 400; the service's errors
#: are JSON.
_NOT_HTTP = _answer(b"400 Bad Request",
                    "the request is not valid HTTP/1.1 (a malformed request line or header); "
                    "send a standard HTTP request")
#: A head the parser gave up on past its own bound (16 KiB unparsed: a head that came in
#: several reads; one read holding it whole reaches :class:`.middleware.HeadLimits`), the
#: same answers: 414 while its request line is not complete, else 431.
#: The parser's bound on an unfinished head (uvicorn's ``h11_max_incomplete_event_size``
#: default, which the service keeps).
PARSER_HEAD_BYTES = 16 << 10
_LONG_TARGET = _answer(b"414 Request-URI Too Long",
                       f"the request target is over {PARSER_HEAD_BYTES} bytes; this server "
                       f"takes at most {MAX_TARGET_BYTES}: send long inputs in the body")
_LONG_HEAD = _answer(b"431 Request Header Fields Too Large",
                     f"the request's header fields are over {PARSER_HEAD_BYTES} bytes; this "
                     f"server takes at most {MAX_HEADER_FIELDS} fields and {MAX_HEADER_BYTES} "
                     "bytes")


class _Counts:
    """What one server's connections share: the caps, the connections open per address
    and in all, and those waiting for a request's headers, the longest-waiting first
    (dicts keep insertion order): the ones closed to make room."""

    def __init__(self, header_seconds: float, max_connections: int, retry_after_s: int,
                 max_total: int, send_idle_seconds: float, pacer: Pacer) -> None:
        self.header_seconds, self.per_address, self.total = (header_seconds,
                                                             max_connections, max_total)
        self.send_idle_seconds, self.pacer = send_idle_seconds, pacer
        self.by_address: Counter[str] = Counter()
        self.opened = 0
        self.waiting: dict[GuardedH11, None] = {}
        self.refusal = _refusal(f"this address already holds {max_connections} open "
                                "connections to the server; reuse them (keep-alive) or "
                                "close some", retry_after_s)
        self.full = _refusal(f"the server holds its {max_total} connections, each with a "
                             "request in progress; retry later", retry_after_s)

    def make_room(self) -> bool:
        """Close the connection that has waited longest for headers, if any."""
        for oldest in self.waiting:
            oldest.stop_waiting()
            oldest.close_now()
            return True
        return False


class _LingeringClose:
    """A connection's transport whose ``close`` is RFC 9112 9.6's lingering close: the
    answers written so far are sent, then the sending side is shut (the client reads them,
    then the end), what the client still sends is read and dropped, and the connection
    closes when the client closes it or after :data:`LINGER_SECONDS`. A plain close with
    bytes unread (the rest of a refused body or head, a request sent after it) makes the
    kernel reset the connection, and the client's stack then drops the answer it had not
    read yet: a client refused 413 or 414 mid-send saw a reset, not the reason."""

    def __init__(self, transport: Any, protocol: GuardedH11) -> None:
        self._transport, self._protocol = transport, protocol
        self._lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._lingering or bool(self._transport.is_closing())

    def close(self) -> None:
        transport = self._transport
        if self._lingering or transport.is_closing():
            return
        if not transport.can_write_eof():  # TLS: no half-close
            transport.close()
            return
        self._lingering = True
        self._protocol.discard_input()
        transport.write_eof()
        self._protocol.loop.call_later(LINGER_SECONDS, transport.close)


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with the connection rules above; :func:`guarded_protocol`
    makes a subclass holding one server's :class:`_Counts`."""

    counts: _Counts
    _deadline: Any = None
    _stalled: Any = None  # the send deadline while the bytes to send pass the high mark
    _address = _peer = ""  # the client's key (:func:`client_key`) and its address
    _started: Any = None  # the request cycle whose headers ended the last wait
    _pieces = _body_bytes = 0  # the current request's body so far
    _splintered = _discarding = False
    _oversized = False  # the parser's bound on an unparsed head was passed
    _status = 0  # the last answer's status code
    _head = b""  # the start of the head being waited for (is its request line complete?)
    _raw: Any = None  # the transport itself (self.transport lingers on close)
    _paced: Any = None  # the timer that lets a paced connection's next request be read

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        counts = self.counts
        self._peer = self.client[0] if self.client else "unknown"
        self._address = client_key(self._peer)
        counts.by_address[self._address] += 1
        counts.opened += 1
        if counts.by_address[self._address] > counts.per_address:
            transport.write(counts.refusal)
            transport.close()
            return
        if counts.opened > counts.total and not counts.make_room():
            transport.write(counts.full)
            transport.close()
            return
        self._raw = transport
        self.transport = _LingeringClose(transport, self)  # type: ignore[assignment]
        self._wait_for_headers()
        self._next_event = self.conn.next_event
        self.conn.next_event = self._counted_event  # type: ignore[method-assign]
        self._send_event = self.conn.send
        self.conn.send = self._noted_send  # type: ignore[method-assign]
        wait = counts.pacer.wait(self._peer, self.loop.time())
        if wait > 0:  # its first request is read once the wait is over
            self.flow.pause_reading()
            self._paced = self.loop.call_later(wait, self._first_read)

    def _first_read(self) -> None:
        self._paced = None
        self.flow.resume_reading()

    def _noted_send(self, event: Any) -> Any:
        """h11's send, the answer's status noted (the pace charges all but inference)."""
        if type(event) is h11.Response:
            self._status = event.status_code
        return self._send_event(event)

    def _counted_event(self) -> Any:
        """h11's next event, the body's pieces counted (a protocol error past the cap:
        uvicorn then answers through :meth:`send_400_response`)."""
        try:
            event = self._next_event()
        except h11.RemoteProtocolError as exc:
            self._oversized = exc.error_status_hint == 431
            raise
        if type(event) is h11.Data:
            self._pieces += 1
            self._body_bytes += len(event.data)
            if self._pieces > BODY_PIECES + self._body_bytes // BYTES_PER_PIECE:
                self._splintered = True
                raise h11.RemoteProtocolError("the body came in too many pieces")
        elif type(event) is h11.Request:
            self._pieces = self._body_bytes = 0
        return event

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_waiting()
        if self._paced is not None:
            self._paced.cancel()
            self._paced = None
        self._send_resumed()
        counts = self.counts
        counts.by_address[self._address] -= 1
        counts.opened -= 1
        if counts.by_address[self._address] <= 0:
            del counts.by_address[self._address]
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._started:
            self._started = self.cycle  # a request's headers are in
            self.stop_waiting()

    def on_response_complete(self) -> None:
        ran = (200 <= self._status < 300 and self.scope is not None
               and BOUNDED.fullmatch(self.scope["path"]) is not None)
        wait = 0.0 if self.transport.is_closing() else self.counts.pacer.wait(
            self._peer, self.loop.time(), charge=not ran)
        if wait > 0:  # the next request (a pipelined one included) is read after it:
            # h11 holds what arrives meanwhile and pauses reading once it is a request
            self._paced = self.loop.call_later(wait, self._next_request)
            return
        self._next_request()

    def _next_request(self) -> None:
        self._paced = None
        # armed first: answering may start a pipelined request, which disarms it
        self._wait_for_headers()
        super().on_response_complete()

    def _wait_for_headers(self) -> None:
        self.stop_waiting()
        self._head = b""
        self._deadline = self.loop.call_later(self.counts.header_seconds, self._headers_late)
        self.counts.waiting[self] = None

    def stop_waiting(self) -> None:
        self.counts.waiting.pop(self, None)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stalled is None:
            self._stalled = self.loop.call_later(self.counts.send_idle_seconds,
                                                 self._send_late)

    def resume_writing(self) -> None:
        self._send_resumed()
        super().resume_writing()

    def _send_resumed(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def _send_late(self) -> None:
        self._stalled = None
        self.transport.abort()  # close() would keep the bytes until the client reads them

    def send_400_response(self, msg: str) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:  # the app's request ends
            cycle.disconnected = True  # here: it reads a disconnect
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.abort()  # an answer is under way: no second one on the wire
                return
        # a lingering close: the client may still be sending (its body, the rest of
        # the line h11 could not parse)
        if self._splintered:
            answer = _SPLINTERED
        elif self._oversized:
            answer = _LONG_HEAD if b"\n" in self._head else _LONG_TARGET
        else:
            answer = _NOT_HTTP
        self.transport.write(answer)
        self.transport.close()

    def discard_input(self) -> None:
        """Read and drop whatever the client sends from now on (the connection is closing
        after its last answer)."""
        self._discarding = True
        self.flow.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._deadline is not None and len(self._head) <= MAX_TARGET_BYTES:
            self._head += data[:MAX_TARGET_BYTES + 64]  # enough to find the line's end
        super().data_received(data)

    def close_now(self) -> None:
        """Close at once, without lingering (a connection that never sent a whole
        request's headers, or one closed to make room: no answer to deliver)."""
        self._raw.close()

    def _headers_late(self) -> None:
        self._deadline = None
        self.counts.waiting.pop(self, None)
        self.close_now()


def guarded_protocol(header_seconds: float, max_connections: int,
                     retry_after_s: int = 1, max_total: int | None = None,
                     send_idle_seconds: float | None = None,
                     pacer: Pacer | None = None) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the header deadline, the per-address cap, the cap on
    all connections, the per-address pace and the send deadline (pass it as
    ``uvicorn.Config(http=...)``); each call makes a class with its own counts. None:
    :class:`ServeConfig`'s defaults (``connections``, ``body_idle_seconds``), and no
    pacing (the app's :class:`..admission.Pacer` is the one its gRPC calls share)."""
    total = max_total if max_total is not None else ServeConfig().connections
    idle = send_idle_seconds if send_idle_seconds is not None else (
        ServeConfig().body_idle_seconds)
    counts = _Counts(header_seconds, max_connections, retry_after_s, total, idle,
                     pacer if pacer is not None else Pacer(None))
    return type("GuardedH11", (GuardedH11,), {"counts": counts})
